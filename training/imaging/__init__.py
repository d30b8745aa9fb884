"""Medical images: contract and loading, splits, image classifiers, local DP rounds, validation, scoring."""
