"""FaceStream stream worker: the ``facestream`` command line, and later sources, the
pipeline, the tracker, Kafka I/O and sinks."""
