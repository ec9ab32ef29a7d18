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
from typing import Any, Literal

import torch
from torch import nn

from levit_trt.variants import Variant

WeightsKind = Literal["pretrained", "random", "file"]

# Bump when the recipe in `make_realistic` changes, so cached ONNX files and engines of random
# weights are rebuilt.
RANDOM_RECIPE_VERSION = 3


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
        make_realistic(model, variant, seed=weights.seed)
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


@dataclass(frozen=True)
class StandInRecipe:
    """The knobs of the stand-in (`random`) weights; `make_realistic` says why each is what it is."""

    inner_norm: tuple[float, float]  # batch-norm scale range (uniform) inside a branch
    trunk_norm: tuple[float, float]  # the same for the norms that write the trunk: stem, downsampling attention
    residual_norm: tuple[float, float]  # the same for the last norm of a residual branch
    norm_bias_std: float  # every batch norm's shift
    attention_bias_std: float
    head_logit_std: float  # the classifier is drawn for logits of about this std on calibration images
    head_fan_in: int  # features each class's logit reads
    stem_gradient: float | None  # std of the stem filters' ramp (edge) part against their mean (blob) part;
    # None keeps timm's white-noise stem filters


STAND_IN_RECIPE = StandInRecipe(
    inner_norm=(0.8, 1.2), trunk_norm=(0.8, 1.2), residual_norm=(0.04, 0.1), norm_bias_std=0.1,
    attention_bias_std=1.0, head_logit_std=2.0, head_fan_in=2, stem_gradient=0.5,
)
# Measured with `python3 tools/stand_in_weights_table.py --seeds 0,1` (the agreement suite's 64
# images; fp64 columns on the first 16; errors and margins over the logit std; noise of std 1e-2):
# variant     seed fp64-max  fp64-rms  cos-mean cos-min  top-1 distinct margin betw/in  std
# LeViT-128S     0   3.8e-05   2.5e-06 0.999998 0.999992 1.000  26/32  0.258  0.995  2.371
# LeViT-128S     1   1.9e-05   1.8e-06 0.999996 0.999983 1.000  22/32  0.326  0.982  2.532
# LeViT-128      0   5.0e-05   3.6e-06 0.999998 0.999992 0.984  26/32  0.253  0.994  2.344
# LeViT-128      1   2.4e-05   2.0e-06 0.999996 0.999965 1.000  28/32  0.261  0.982  2.250
# LeViT-192      0   2.5e-05   2.1e-06 0.999997 0.999985 0.984  24/32  0.310  0.989  2.307
# LeViT-192      1   2.8e-05   1.6e-06 0.999997 0.999988 0.984  23/32  0.212  0.985  2.691
# LeViT-256      0   6.7e-05   3.9e-06 0.999997 0.999982 1.000  25/32  0.204  0.984  3.618
# LeViT-256      1   4.0e-05   2.3e-06 0.999998 0.999988 1.000  22/32  0.316  0.982  2.114
# LeViT-384      0   4.3e-05   3.4e-06 0.999997 0.999990 1.000  27/32  0.261  0.991  2.774
# LeViT-384      1   3.0e-05   2.4e-06 0.999997 0.999988 1.000  23/32  0.218  0.984  2.372
# The variants STAND_IN_RECIPE was measured on (tools/stand_in_weights_table.py); another model is refused.
STAND_IN_MEASURED = ("levit_128s", "levit_128", "levit_192", "levit_256", "levit_384")


def _smooth_filters(shape: torch.Size, gradient: float, generator: torch.Generator) -> torch.Tensor:
    """Convolution filters that are each a random mean plus a random linear ramp across the kernel."""
    out_channels, in_channels, height, width = shape
    v, u = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    basis = torch.stack([torch.ones_like(u), u, v])  # [3, height, width]
    weights = torch.randn(out_channels, in_channels, 3, 1, 1, generator=generator)
    weights[:, :, 1:] *= gradient
    return (weights * basis).sum(dim=2) / (in_channels * height * width) ** 0.5


def _sparse_classifier(shape: torch.Size, recipe: StandInRecipe, generator: torch.Generator) -> torch.Tensor:
    """Classifier weights where each class reads `head_fan_in` random features (of unit variance)."""
    classes, features = shape
    chosen = torch.rand(classes, features, generator=generator).topk(recipe.head_fan_in, dim=1).indices
    weights = torch.zeros(classes, features)
    # the two heads are averaged, so each gets sqrt(2) x the std
    std = recipe.head_logit_std * 2 ** 0.5 / recipe.head_fan_in ** 0.5
    weights.scatter_(1, chosen, std * torch.randn(classes, recipe.head_fan_in, generator=generator))
    return weights


def _check_measured(model: nn.Module, variant: Variant) -> None:
    """Refuse a model the recipe was not measured on: another variant, timm's conv mode, another net."""
    from timm.models import levit

    if variant.name not in STAND_IN_MEASURED:
        raise WeightsError(f"the stand-in weights recipe was not measured on {variant.display}; measure it "
                           f"with tools/stand_in_weights_table.py and add it to STAND_IN_MEASURED")
    expected = (levit.LevitDistilled.__name__, False, variant.depths, variant.num_heads, variant.embed_dims)
    found: tuple[object, ...] = (type(model).__name__, getattr(model, "use_conv", None))
    if found == expected[:2]:  # only then are the blocks timm's linear-mode ones
        net: Any = model  # timm's LeViT: its submodules' attributes are untyped
        stages: list[Any] = list(net.stages)
        found += (tuple(len(stage.blocks) for stage in stages),
                  tuple(stage.blocks[0].attn.num_heads for stage in stages),
                  tuple(stage.blocks[0].attn.qkv.linear.in_features for stage in stages))
    if found != expected:
        raise WeightsError(
            f"the stand-in weights recipe makes only timm's linear-mode distilled LeViT stable; this model "
            f"(class, conv mode, depths, heads, widths) is {found}, {variant.display} is {expected}")


@torch.no_grad()
def make_realistic(model: nn.Module, variant: Variant, seed: int = 0, recipe: StandInRecipe = STAND_IN_RECIPE,
                   calibration_images: int = 32) -> nn.Module:
    """Give a freshly initialised LeViT of `variant` smooth, input-dependent logits, in place.

    timm initialises every residual branch's last batch-norm scale and all attention biases to zero,
    so its logits barely depend on the input. Random weights drawn carelessly are worse: the network
    is chaotic, so fp32 and float64 disagree and any backend's rounding flips classes (measured with
    the earlier recipe, branch norms of 0.1-0.4 and attention biases of std 6: 1e-2 input noise gave
    logit cosines down to 0.78 on LeViT-128S and 0.73 on LeViT-384). This recipe is smooth the way a
    trained network is, for four reasons, each measured (tools/stand_in_weights_table.py):
    - residual branches end in a norm of scale 0.04-0.1 against a trunk of about unit scale, so no
      block can amplify what the blocks before it computed (during the search, with other norms at
      0.5-1.5, branch scales of 0.05-0.15 gave LeViT-256 a worst fp32-vs-float64 error of 1.3e-4
      of the logit std, 0.03-0.08 gave 3.6e-5);
    - attention logits are moderate: q.k of about unit std (normalised q and k, scale 1/sqrt(key_dim))
      plus biases of std 1, so no softmax is near one-hot (flatter attention, q and k at half
      scale, was worse during the search: it averages values and the next norm re-amplifies them);
    - the stem's filters are smooth (a mean plus a ramp across each 3x3 kernel), as a trained stem's
      blobs and edges are, so the logits follow the images' coarse structure rather than their pixel
      noise (during the search, with timm's white-noise filters 1e-2 input noise moved LeViT-128S's
      logits by cosine 0.9989 and flipped 16% of top-1 classes; with smooth ones, 0.999996 and none);
    - each class reads two features (`head_fan_in`): with dense classifier rows the logits of an
      image were Gaussian over 1000 classes and near-ties flipped under the noise (1-2 of 32 images).
    The classifier is drawn for logits of std `head_logit_std` on normalised features, so classes
    spread over the images instead of one class winning everywhere. Running statistics are then
    estimated on synthetic calibration images, in one batch: the eval-mode network then normalises
    each layer with the statistics of inputs made by the already-normalised layers before it.
    Deterministic per seed: every draw comes from one generator seeded with `seed`.
    """
    from timm.models import levit

    _check_measured(model, variant)
    net: Any = model  # timm's LeViT: its submodules' attributes are untyped
    generator = torch.Generator().manual_seed(seed)

    def uniform(shape: torch.Size, bounds: tuple[float, float]) -> torch.Tensor:
        low, high = bounds
        return low + (high - low) * torch.rand(shape, generator=generator)

    stem = [net.stem.conv1, net.stem.conv2, net.stem.conv3, net.stem.conv4]
    if recipe.stem_gradient is not None:
        for conv in stem:
            conv.linear.weight.copy_(_smooth_filters(conv.linear.weight.shape, recipe.stem_gradient, generator))
    residual: set[nn.Module] = set()
    trunk: set[nn.Module] = {conv.bn for conv in stem}
    blocks: list[Any] = [m for m in net.modules() if isinstance(m, levit.LevitBlock)]
    downsamples: list[Any] = [m for m in net.modules() if isinstance(m, levit.LevitDownsample)]
    for block in blocks:
        residual.update((block.attn.proj.ln.bn, block.mlp.ln2.bn))
    for downsample in downsamples:
        residual.add(downsample.mlp.ln2.bn)
        trunk.add(downsample.attn_downsample.proj.ln.bn)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        bounds = (recipe.residual_norm if norm in residual else recipe.trunk_norm if norm in trunk
                  else recipe.inner_norm)
        norm.weight.copy_(uniform(norm.weight.shape, bounds))
        norm.bias.copy_(recipe.norm_bias_std * torch.randn(norm.bias.shape, generator=generator))
        norm.reset_running_stats()
        norm.momentum = None  # running statistics = those of the calibration batch
    for name, parameter in model.named_parameters():
        if name.endswith("attention_biases"):
            parameter.copy_(recipe.attention_bias_std * torch.randn(parameter.shape, generator=generator))
    for head in (net.head, net.head_dist):
        head.bn.weight.fill_(1.0)
        head.bn.bias.zero_()
        head.linear.weight.copy_(_sparse_classifier(head.linear.weight.shape, recipe, generator))
        head.linear.bias.zero_()
    model.train()
    model(synthetic_images(calibration_images, seed=seed + 1))
    for norm in norms:
        norm.momentum = 0.1
    return model.eval()
