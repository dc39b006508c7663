"""Weight conversion: the only part of FaceStream that needs PyTorch.

Contract: each converter (named by its bundle in :mod:`engines.store.catalog`) takes the
verified source files of a bundle and writes ONNX files plus their specs into a folder,
checking the ONNX graph numerically against the original weights. Weights are read with
``torch.load(weights_only=True)`` or by FaceStream's own parser of dlib's format; nothing
is unpickled. Install PyTorch with the ``convert`` extra; a worker that finds its models
in the cache never imports this package.
"""
