"""Data: Moving MNIST sources → sharded TFRecords + manifest → tf.data pipelines."""
