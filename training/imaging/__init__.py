"""Medical images: contract, loading and decoding, splits, classifiers, local DP rounds, validation, scoring, synth."""
