"""Using a trained model: evaluate, predict, scoring and OpenSTL's metrics, model sources, the served model."""
