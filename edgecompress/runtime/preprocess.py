"""How a dataset's stored images become a model's input, as data: one `Preprocess` per dataset loader.

Each loader in evaluators/data.py (folders: splits.py) defines its `Preprocess` next to its code and uses it (PIL
resize dims, crop box, mean/std), so what is written here is what the loader does. From the same object:
    `describe(size)`      the steps in words and as data (an export's config.yaml `input.preprocess`);
    `apply(image, size)`  the steps in plain PIL + numpy, from a file or a uint8 array (what a user would
                          write; the export checks the description with it on the dataset's raw files);
    `preprocessing_graph(spec, size)` / `with_preprocessing(model, spec, size)`  the steps as an ONNX graph
                          (uint8 images in, opset >= 18 for Resize's antialias) in front of a model; one helper
                          for exports, cascades and cropping stages.

Below the evaluators in the import-linter layers: it imports no other edgecompress layer; onnx is imported
only by the graph builders.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import EdgeCompressError

#: ONNX Resize has `antialias` from opset 18 (onnxruntime implements it for uint8 and float)
PREPROCESS_OPSET = 18
LAYOUTS = ("NHWC", "NCHW")
#: the largest default input side of a folder dataset (ImageNet's 224: larger images are resized down to it)
MAX_FOLDER_SIZE = 224


def round_half_up(x: float) -> int:
    """floor(x + 0.5): the rounding of every computed side length (ONNX Floor(x + 0.5) does the same)."""
    return int(math.floor(x + 0.5))


@dataclass(frozen=True)
class Preprocess:
    """The inference-time preprocessing of one dataset's loader, at any input size.

    Steps, in order (a step whose field is off is skipped):
        1. decode: `pil_mode` set: PIL.Image.open(file).convert(pil_mode), uint8 H x W x C;
           None: the images are stored decoded (`stored` says how) as uint8.
        2. `short_side_ratio` set: PIL resize (Image.BILINEAR, which filters when shrinking) to
           `resized_dims`: the short side becomes round_half_up(ratio x size), the long side keeps the aspect.
        3. `center_crop`: the centre size x size window of `crop_box` (offsets floor((side - size) / 2)).
        4. float32, divided by `divisor` (255).
        5. `tensor_resize`: when the image is not size x size, bilinear resize with antialias
           (torch F.interpolate(mode="bilinear", antialias=True, align_corners=False)) to size x size.
        6. (x - mean) / std per channel; channel order NCHW (channels `channels`, RGB for colour).
    Training augmentation (random crop, flip) is not part of it.
    """

    dataset: str
    stored: str  # words: what the loader reads
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pil_mode: str | None = None
    short_side_ratio: float | None = None
    center_crop: bool = False
    tensor_resize: bool = True
    divisor: float = 255.0

    def __post_init__(self) -> None:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean/std need {self.channels} values each (Preprocess {self.dataset})")
        if self.short_side_ratio is not None and self.short_side_ratio < 1.0:
            raise ValueError(f"short_side_ratio must be >= 1 (it is cropped to size), got {self.short_side_ratio} "
                             f"(Preprocess {self.dataset})")
        if self.center_crop and self.short_side_ratio is None:
            raise ValueError(f"center_crop needs short_side_ratio (Preprocess {self.dataset})")
        if self.pil_mode is not None and self.pil_mode not in ("RGB", "L"):
            raise ValueError(f"pil_mode must be 'RGB' or 'L', got {self.pil_mode!r} (Preprocess {self.dataset})")

    # ---- the geometry the loader uses --------------------------------------------------------------
    def short_side(self, size: int) -> int:
        """The short side (px) after the PIL resize for input `size`."""
        if self.short_side_ratio is None:
            raise ValueError(f"short_side_ratio is not set: {self.dataset} has no short-side resize")
        return round_half_up(self.short_side_ratio * size)

    def resized_dims(self, width: int, height: int, size: int) -> tuple[int, int]:
        """(width, height) of the PIL resize: short side `short_side(size)`, the other side in proportion."""
        s = self.short_side(size)
        short = min(width, height)
        return round_half_up(width * s / short), round_half_up(height * s / short)

    @staticmethod
    def crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the centre size x size window of a width x height image."""
        left, top = (width - size) // 2, (height - size) // 2
        return left, top, left + size, top + size

    def largest_size(self, short: int, cap: int = MAX_FOLDER_SIZE) -> int:
        """The largest input size (<= cap) whose resize does not enlarge an image with this short side."""
        if self.short_side_ratio is None:
            return min(cap, short)
        size = max(1, min(cap, int(short / self.short_side_ratio) + 1))
        while size > 1 and self.short_side(size) > short:
            size -= 1
        return size

    # ---- the description ---------------------------------------------------------------------------
    def steps(self, size: int) -> list[dict[str, Any]]:
        """The steps as data, in order, for input `size`."""
        out: list[dict[str, Any]] = []
        if self.pil_mode is not None:
            out.append({"op": "decode", "library": "PIL", "mode": self.pil_mode,
                        "call": f"Image.open(file).convert({self.pil_mode!r})", "to": "uint8 H x W x C"})
        else:
            out.append({"op": "decode", "library": None, "stored": self.stored, "to": "uint8 H x W x C"})
        if self.short_side_ratio is not None:
            out.append({"op": "resize_short_side", "library": "PIL", "interpolation": "bilinear",
                        "call": "Image.resize((w2, h2), Image.BILINEAR)", "ratio": self.short_side_ratio,
                        "short_side": self.short_side(size),
                        "rule": "s = floor(ratio * size + 0.5); w2 = floor(w * s / min(w, h) + 0.5); "
                                "h2 = floor(h * s / min(w, h) + 0.5)"})
        if self.center_crop:
            out.append({"op": "center_crop", "size": size,
                        "rule": "left = (w2 - size) // 2; top = (h2 - size) // 2"})
        out.append({"op": "to_float", "dtype": "float32", "divide_by": self.divisor})
        if self.tensor_resize:
            out.append({"op": "resize", "size": [size, size], "interpolation": "bilinear", "antialias": True,
                        "align_corners": False, "when": "height or width != size",
                        "call": "torch.nn.functional.interpolate(x, (size, size), mode='bilinear', "
                                "align_corners=False, antialias=True)"})
        out.append({"op": "normalize", "mean": list(self.mean), "std": list(self.std), "formula": "(x - mean) / std"})
        out.append({"op": "layout", "to": "NCHW",
                    "channels": "RGB" if self.channels == 3 else ("gray" if self.channels == 1 else self.channels)})
        return out

    def words(self, size: int) -> list[str]:
        """The steps in words, in order, for input `size`."""
        out: list[str] = []
        if self.pil_mode is not None:
            out.append(f"decode the file with PIL: Image.open(file).convert({self.pil_mode!r}) -> uint8 "
                       f"height x width x {self.channels}")
        else:
            out.append(f"take the stored uint8 pixels ({self.stored}) as height x width x {self.channels}")
        if self.short_side_ratio is not None:
            s = self.short_side(size)
            out.append(f"resize with PIL, Image.BILINEAR, so the short side is {s} px "
                       f"(= floor({self.short_side_ratio:g} x {size} + 0.5)) and the long side keeps the aspect: "
                       f"new side = floor(side x {s} / short side + 0.5)")
        if self.center_crop:
            out.append(f"crop the centre {size} x {size} px: left = (new width - {size}) // 2, "
                       f"top = (new height - {size}) // 2")
        out.append(f"convert to float32 and divide by {self.divisor:g}")
        if self.tensor_resize:
            out.append(f"if not {size} x {size}: bilinear resize to {size} x {size} with antialias, half-pixel "
                       "centres (torch F.interpolate(mode='bilinear', align_corners=False, antialias=True); "
                       "PIL-style triangle filter widened by the shrink factor)")
        out.append(f"per channel: (x - mean) / std with mean {list(self.mean)} and std {list(self.std)}")
        out.append(f"channel order NCHW ({'RGB' if self.channels == 3 else f'{self.channels} channel'}), float32, "
                   f"batch of N x {self.channels} x {size} x {size}")
        return out

    def describe(self, size: int) -> dict[str, Any]:
        """config.yaml's `input.preprocess`: words and data for input `size`."""
        return {"dataset": self.dataset, "size": size, "words": self.words(size), "steps": self.steps(size)}

    # ---- the plain PIL + numpy reference -----------------------------------------------------------
    def apply(self, image: Any, size: int) -> np.ndarray:
        """The steps on one image (a file path, a PIL image, or uint8 H x W [x C]) -> float32 C x size x size."""
        arr = self.decode(image)
        if self.short_side_ratio is not None:
            from PIL import Image

            im = Image.fromarray(arr if arr.shape[2] > 1 else arr[:, :, 0])
            h, w = arr.shape[:2]
            im = im.resize(self.resized_dims(w, h, size), Image.BILINEAR)
            if self.center_crop:
                im = im.crop(self.crop_box(im.width, im.height, size))
            arr = np.asarray(im, dtype=np.uint8).reshape(im.height, im.width, -1)
        x = arr.astype(np.float32) / np.float32(self.divisor)
        if self.tensor_resize and x.shape[:2] != (size, size):
            x = aa_bilinear_resize(x, size, size)
        if x.shape[:2] != (size, size):
            raise EdgeCompressError(f"{self.dataset}: preprocessing gives {x.shape[0]} x {x.shape[1]}, not {size}")
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)

    def decode(self, image: Any) -> np.ndarray:
        """uint8 H x W x C pixels of `image` (decoded and converted with PIL when `pil_mode` is set)."""
        from PIL import Image

        if isinstance(image, (str, os.PathLike)):
            with Image.open(Path(image)) as im:
                return self.decode(im.convert(self.pil_mode or ("RGB" if self.channels == 3 else "L")))
        if isinstance(image, Image.Image):
            if self.pil_mode is not None:
                image = image.convert(self.pil_mode)
            arr = np.asarray(image, dtype=np.uint8)
        else:
            arr = np.asarray(image)
            if arr.dtype != np.uint8:
                raise ValueError(f"image: expected uint8 pixels ({self.dataset}), got {arr.dtype}")
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[2] != self.channels:
            raise ValueError(f"image: expected H x W x {self.channels} pixels ({self.dataset}), "
                             f"got shape {list(arr.shape)}")
        return arr


def aa_weights(n_in: int, n_out: int) -> np.ndarray:
    """n_out x n_in weights of antialiased bilinear resampling (half-pixel centres, triangle filter widened by
    the shrink factor, renormalised at the borders): torch's antialias=True and PIL's BILINEAR weights."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    w = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        taps = np.clip(1.0 - np.abs((np.arange(lo, hi) - centre + 0.5) / support), 0.0, None)
        w[i, lo:hi] = taps / taps.sum()
    return w


def aa_bilinear_resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased bilinear resize of a float H x W x C array (numpy; torch's antialias=True to float precision)."""
    out = np.einsum("ih,hwc->iwc", aa_weights(x.shape[0], height), x.astype(np.float64))
    out = np.einsum("jw,iwc->ijc", aa_weights(x.shape[1], width), out)
    return out.astype(np.float32)


# ---- ONNX -------------------------------------------------------------------------------------------
def preprocessing_graph(spec: Preprocess, size: int, layout: str = "NHWC", opset: int = PREPROCESS_OPSET,
                        input_name: str = "images", output_name: str = "input",
                        ir_version: int | None = None) -> Any:
    """An ONNX model running `spec`'s steps 2-6 at `size`: uint8 images (N x H x W x C for "NHWC", N x C x H x W
    for "NCHW"; decoded as in step 1, one H x W per batch) -> float32 N x C x size x size.

    The PIL resize is an ONNX Resize on the uint8 image (linear, antialias=1, exclude_outside=1, half-pixel),
    which onnxruntime computes as PIL does (pixels within 1 of PIL's); the output sides come from the input's
    shape with the same rounding as `Preprocess.resized_dims`.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if opset < PREPROCESS_OPSET:
        raise ValueError(f"opset >= {PREPROCESS_OPSET} is needed by ONNX Resize with antialias (the preprocessing "
                         f"graph), got {opset}")
    hw = [1, 2] if layout == "NHWC" else [2, 3]
    nodes: list[Any] = []
    inits: list[Any] = []

    def const(name: str, value: Any, dtype: Any) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), f"pp/{name}"))
        return f"pp/{name}"

    def node(op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [f"pp/{name}"], name=f"pp/{name}_op", **attrs))
        return f"pp/{name}"

    # Resize gets `sizes` for all 4 axes (no `axes` attribute): onnxruntime's transpose optimizer, which moves
    # the NHWC -> NCHW Transpose when an int8 model runs in NHWC, mis-permutes a 2-element `sizes`
    resize_attrs = {"mode": "linear", "antialias": 1, "exclude_outside": 1,
                    "coordinate_transformation_mode": "half_pixel"}
    x = input_name
    if spec.short_side_ratio is not None:
        shape = node("Shape", [x], "shape")
        in_hw = node("Cast", [node("Gather", [shape, const("hw_axes", hw, np.int64)], "hw")], "hw_f",
                     to=TensorProto.DOUBLE)
        short = node("ReduceMin", [in_hw], "short", keepdims=1)
        factor = node("Div", [const("short_side", [spec.short_side(size)], np.float64), short], "factor")
        new_hw = node("Floor", [node("Add", [node("Mul", [in_hw, factor], "scaled"), const("half", 0.5, np.float64)],
                                     "scaled_half")], "new_hw_f")
        new_hw = node("Cast", [new_hw], "new_hw", to=TensorProto.INT64)
        n_axis = node("Shape", [x], "n", start=0, end=1)
        if layout == "NHWC":
            sizes = node("Concat", [n_axis, new_hw, node("Shape", [x], "c", start=3, end=4)], "pil_sizes", axis=0)
        else:
            sizes = node("Concat", [node("Shape", [x], "nc", start=0, end=2), new_hw], "pil_sizes", axis=0)
        x = node("Resize", [x, "", "", sizes], "pil_resize", **resize_attrs)
        if spec.center_crop:
            start = node("Div", [node("Sub", [new_hw, const("size", [size, size], np.int64)], "margin"),
                                 const("two", [2, 2], np.int64)], "crop_start")
            end = node("Add", [start, const("size2", [size, size], np.int64)], "crop_end")
            x = node("Slice", [x, start, end, const("crop_axes", hw, np.int64)], "crop")
    x = node("Cast", [x], "float", to=TensorProto.FLOAT)
    x = node("Div", [x, const("divisor", spec.divisor, np.float32)], "scaled01")
    if layout == "NHWC":
        x = node("Transpose", [x], "nchw", perm=[0, 3, 1, 2])
    if spec.tensor_resize:
        sizes = node("Concat", [node("Shape", [x], "nc_out", start=0, end=2), const("out_hw", [size, size], np.int64)],
                     "sizes", axis=0)
        x = node("Resize", [x, "", "", sizes], "resize", **resize_attrs)
    c = spec.channels
    x = node("Sub", [x, const("mean", np.reshape(spec.mean, (1, c, 1, 1)), np.float32)], "centred")
    nodes.append(helper.make_node("Div", [x, const("std", np.reshape(spec.std, (1, c, 1, 1)), np.float32)],
                                  [output_name], name="pp/normalize_op"))
    in_shape = ["N", "H", "W", c] if layout == "NHWC" else ["N", c, "H", "W"]
    graph = helper.make_graph(
        nodes, "preprocess", [helper.make_tensor_value_info(input_name, TensorProto.UINT8, in_shape)],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", c, size, size])], initializer=inits,
        doc_string="; ".join(spec.words(size)),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="edgecompress.preprocess")
    if ir_version is not None:
        model.ir_version = ir_version
    onnx.checker.check_model(model)
    return model


def model_opset(model: Any) -> int:
    """The default-domain opset of an ONNX model."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def with_preprocessing(model: Any, spec: Preprocess, size: int, layout: str = "NHWC",
                       input_name: str = "images") -> Any:
    """`model` (ModelProto or .onnx path, one float NCHW input at `size`) with `spec`'s steps in front of it:
    the result takes uint8 images (see `preprocessing_graph`) and gives the model's outputs.

    A model below opset 18 is converted to 18 first (onnx.version_converter), so that both graphs share one
    opset; the graphs are joined with onnx.compose.merge_models.
    """
    import onnx
    from onnx import compose, helper, version_converter

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    opset = model_opset(model)
    if opset < PREPROCESS_OPSET:
        try:
            model = version_converter.convert_version(model, PREPROCESS_OPSET)
        except Exception as e:  # noqa: BLE001 - the converter raises many types
            raise EdgeCompressError(f"cannot convert the model from opset {opset} to {PREPROCESS_OPSET} for the "
                                    f"preprocessing graph: {str(e).splitlines()[0]}") from None
        opset = PREPROCESS_OPSET
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise EdgeCompressError(f"with_preprocessing: the model has {len(inputs)} inputs, expected 1")
    if input_name in {i.name for i in model.graph.input} | {o.name for o in model.graph.output}:
        raise EdgeCompressError(f"with_preprocessing: the model already has a tensor named {input_name!r}")
    pre = preprocessing_graph(spec, size, layout, opset=opset, input_name=input_name,
                              output_name="pp/model_input", ir_version=model.ir_version)
    merged = compose.merge_models(pre, model, io_map=[("pp/model_input", inputs[0].name)],
                                  producer_name="edgecompress.preprocess", doc_string=pre.graph.doc_string)
    opsets: dict[str, int] = {}
    for o in merged.opset_import:  # merge_models lists a domain both graphs import twice
        opsets.setdefault(o.domain, o.version)
    del merged.opset_import[:]
    merged.opset_import.extend(helper.make_opsetid(d, v) for d, v in opsets.items())
    onnx.checker.check_model(merged)
    return merged
