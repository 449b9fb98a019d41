"""nfp: next-frame video prediction with ConvLSTM, tracked in MLflow."""

__version__ = "0.1.0"
