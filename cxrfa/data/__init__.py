"""The data layer: manifests (the one data contract), format readers, splits, synthetic CXRs, Datasets."""
