"""What a hospital and the coordinator compute on data: shared helpers at this level, one sub-package per modality.

Shared: the modality interface (``modality``), errors, privacy accounting and the DP loop
(``privacy``, ``dp_loop``, ``dp_statistics``), validation aggregates and binned metrics,
decision rules, model selection, categories, fingerprints, report rendering, the data split
tool. Modalities: ``training.tabular`` (clinical tables) and ``training.imaging`` (images).
"""
