"""Where a model's weights come from: timm's hub, a local checkpoint file, or seeded random.

The source is always chosen explicitly (`--weights pretrained|random[:SEED]|PATH`); nothing falls
back from one source to another. Checkpoints are read with `weights_only=True` or safetensors, so
loading a file never runs code from it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from levit_trt.variants import Variant

WeightsKind = Literal["pretrained", "random", "file"]

# Bump when the recipe in `make_realistic` changes, so cached ONNX files and engines of random
# weights are rebuilt.
RANDOM_RECIPE_VERSION = 2


class WeightsError(RuntimeError):
    """Weights that cannot be obtained or do not fit the model; the message names the source."""


@dataclass(frozen=True)
class WeightsSpec:
    """An explicit choice of weights."""

    kind: WeightsKind
    path: Path | None = None
    seed: int = 0

    def describe(self) -> str:
        if self.kind == "file":
            return str(self.path)
        if self.kind == "random":
            return f"random:{self.seed}"
        return "pretrained"

    def cache_token(self, variant: Variant) -> str:
        """A string that changes whenever the weights this spec yields can change."""
        import timm

        if self.kind == "file":
            assert self.path is not None
            return f"file-sha256:{file_sha256(self.path)}"
        if self.kind == "random":
            return f"random:{self.seed}:recipe{RANDOM_RECIPE_VERSION}:timm{timm.__version__}"
        return f"pretrained:{variant.timm_pretrained_name}:timm{timm.__version__}"


def parse_weights(text: str | WeightsSpec) -> WeightsSpec:
    """Parse `pretrained`, `random`, `random:SEED` or a checkpoint path."""
    if isinstance(text, WeightsSpec):
        return text
    value = text.strip()
    if value == "pretrained":
        return WeightsSpec("pretrained")
    if value == "random" or value.startswith("random:"):
        seed_text = value.partition(":")[2] or "0"
        try:
            return WeightsSpec("random", seed=int(seed_text))
        except ValueError:
            raise WeightsError(f"bad weights {text!r}: the seed after 'random:' must be an integer") from None
    path = Path(value).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} does not exist (use 'pretrained' for timm's hub weights, "
            f"'random[:SEED]' for test weights, or the path of a .pth/.safetensors checkpoint)"
        )
    return WeightsSpec("file", path=path.resolve())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def create_model(variant: Variant, weights: WeightsSpec) -> nn.Module:
    """A timm LeViT in eval mode with the chosen weights applied (batch norms not yet folded)."""
    import timm

    if weights.kind == "pretrained":
        try:
            model = timm.create_model(variant.timm_pretrained_name, pretrained=True)
        except Exception as error:  # network, hub or cache failures all surface here
            raise WeightsError(
                f"could not load timm's pretrained weights for {variant.display} "
                f"({variant.timm_pretrained_name}): {error}. Offline? Download them once with "
                f"network access, or pass --weights PATH to a local checkpoint."
            ) from error
        return model.eval()
    if weights.kind == "random":
        # timm draws its initial weights from the global RNG: seed it, without disturbing the caller's.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(weights.seed)
            model = timm.create_model(variant.timm_name, pretrained=False)
        make_realistic(model, seed=weights.seed)
    else:
        model = timm.create_model(variant.timm_name, pretrained=False)
        assert weights.path is not None
        apply_state_dict(model, read_checkpoint(weights.path), weights.path)
    return model.eval()


ACCEPTED_CHECKPOINTS = (
    "a state dict of tensors saved with torch.save (.pth/.pt; the original facebookresearch/LeViT release's "
    "{'model': ...} too) or a .safetensors file"
)


def _unreadable_reason(error: Exception) -> str:
    """Why torch or safetensors could not read a file, without torch's advice to unpickle it (we never do)."""
    text = str(error)
    unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if unsupported:
        return (f"it pickles a Python object ({unsupported.group(1)}) besides tensors, and levit_trt never unpickles "
                "objects; save model.state_dict() instead")
    first_sentence = text.strip().split(". ")[0].splitlines()[0] if text.strip() else ""
    if not first_sentence or "weights only" in first_sentence.lower() or "weights_only" in first_sentence:
        return f"{type(error).__name__}: not a torch.save file, or a damaged one"
    return f"{type(error).__name__}: {first_sentence}"


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors or a torch file, converting the original release's keys."""
    state: object  # whatever the file holds, until checked below
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsError(f"weights file {path} is not a readable checkpoint ({_unreadable_reason(error)}); "
                           f"accepted: {ACCEPTED_CHECKPOINTS}") from error
    if isinstance(state, dict):
        for wrapper in ("model", "state_dict", "model_ema"):
            if wrapper in state and isinstance(state[wrapper], dict):
                state = state[wrapper]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} holds no state dict of tensors")
    if any(key.startswith(("patch_embed.", "blocks.")) for key in state):
        state = convert_official_state_dict(state, path)
    return state


_OFFICIAL_SUFFIXES = {  # original release's module suffix -> timm's
    ".c.weight": ".linear.weight",
    ".l.weight": ".linear.weight",
    ".l.bias": ".linear.bias",
}


def convert_official_state_dict(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Rename keys of the facebookresearch/LeViT release (`{"model": ...}`) to timm's.

    Both implementations register parameters in the same order (stem convs, then per block the
    attention biases, qkv/kv/q, proj, then the MLP; downsampling attention before each stage's
    blocks; heads last), so keys are paired in order. Every pair is checked for a matching
    parameter kind and shape, so a checkpoint of another variant or layout fails loudly.
    """
    import timm

    official = [(k, v) for k, v in state.items() if "attention_bias_idxs" not in k]
    variant_name = _guess_timm_name(state)
    reference = timm.create_model(variant_name, pretrained=False).state_dict()
    if len(official) != len(reference):
        raise WeightsError(
            f"weights file {path}: {len(official)} tensors in the original LeViT layout, but "
            f"{variant_name} has {len(reference)}; is it a checkpoint of another model?"
        )
    converted: dict[str, torch.Tensor] = {}
    for (old_key, tensor), (new_key, expected) in zip(official, reference.items()):
        old_suffix = next((s for s in _OFFICIAL_SUFFIXES if old_key.endswith(s)), None)
        same_kind = (
            new_key.endswith(_OFFICIAL_SUFFIXES[old_suffix]) if old_suffix
            else old_key.rsplit(".", 1)[-1] == new_key.rsplit(".", 1)[-1]
        )
        if not same_kind or tensor.shape != expected.shape:
            raise WeightsError(
                f"weights file {path}: original key {old_key} {tuple(tensor.shape)} does not line "
                f"up with timm key {new_key} {tuple(expected.shape)} of {variant_name}"
            )
        converted[new_key] = tensor
    return converted


def _guess_timm_name(state: dict[str, torch.Tensor]) -> str:
    """The timm architecture whose stem and stage widths match an original-layout checkpoint."""
    from levit_trt.variants import VARIANTS

    stem_out = state.get("patch_embed.6.c.weight")
    head = state.get("head.l.weight")
    for variant in VARIANTS.values():
        if (
            stem_out is not None and head is not None
            and stem_out.shape[0] == variant.embed_dims[0]
            and head.shape[1] == variant.embed_dims[2]
            and state.get("blocks.0.m.attention_biases", torch.empty(0)).shape[:1] == (variant.num_heads[0],)
        ):
            return variant.timm_name
    raise WeightsError("checkpoint in the original LeViT layout matches none of the known variants")


def apply_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load `state` strictly, reporting missing, unexpected and mis-shaped keys together."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected if k in state and state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if mis_shaped:
        problems.append(f"{len(mis_shaped)} shape mismatches (e.g. {'; '.join(mis_shaped[:3])})")
    if problems:
        raise WeightsError(f"weights file {source} does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def synthetic_images(count: int, size: int = 224, seed: int = 0) -> torch.Tensor:
    """Normalised images with smooth, image-like structure (not white noise), for tests and calibration."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(count, 3, 7, 7, generator=generator)
    images = nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    images += 0.2 * torch.randn(count, 3, size, size, generator=generator)
    return images


# Residual-branch batch norms (timm initialises their scale to zero). Their scale sets how chaotic
# a random LeViT is: measured on levit_128s, scales of 0.5-1.5 gave fp32-vs-fp64 logit errors of
# 0.2, scales of 0.1-0.4 with attention biases of std 6 gave 1.5e-4 while 15 of 16 images still
# got distinct top-1 classes.
_RESIDUAL_NORM_SUFFIXES = ("proj.ln.bn", "mlp.ln2.bn")


@torch.no_grad()
def make_realistic(model: nn.Module, seed: int = 0, calibration_images: int = 32) -> nn.Module:
    """Give a freshly initialised LeViT realistic, input-dependent activations, in place.

    timm initialises the batch-norm scale of every residual branch and all attention biases to
    zero, so such a model's logits barely depend on the input and a parity test on it proves
    little. This draws random batch-norm affines (small on residual branches, see above) and
    strong attention biases, then re-estimates the running statistics on synthetic images.
    """
    generator = torch.Generator().manual_seed(seed)
    norms = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for name, norm in norms:
        low, high = (0.1, 0.4) if name.endswith(_RESIDUAL_NORM_SUFFIXES) else (0.5, 1.5)
        norm.weight.copy_(low + (high - low) * torch.rand(norm.weight.shape, generator=generator))
        norm.bias.copy_(0.2 * torch.randn(norm.bias.shape, generator=generator))
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration batches
    for name, parameter in model.named_parameters():
        if name.endswith("attention_biases"):
            parameter.copy_(6.0 * torch.randn(parameter.shape, generator=generator))
    model.train()
    for batch in synthetic_images(calibration_images, seed=seed + 1).split(16):
        model(batch)
    for _, norm in norms:
        norm.momentum = 0.1
    return model.eval()
