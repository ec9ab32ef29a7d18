"""Weights sources: explicit choice, safe loading, conversion of the original release, clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from levit_trt.variants import resolve_variant
from levit_trt.weights import (
    WeightsError,
    convert_official_state_dict,
    create_model,
    parse_weights,
    read_checkpoint,
)

VARIANT = resolve_variant("128S")


@pytest.fixture(scope="module")
def timm_state() -> dict[str, torch.Tensor]:
    return create_model(VARIANT, parse_weights("random:3")).state_dict()


def official_key(timm_key: str, block_index: dict[str, int]) -> str:
    """Name a timm LeViT key as the facebookresearch release does, written independently of
    the converter (which pairs keys by order): stem convs are patch_embed.0/2/4/6, every
    attention/MLP residual is one entry of a flat `blocks` list, heads use `l` for the linear."""
    if m := re.fullmatch(r"stem\.conv(\d)\.linear\.weight", timm_key):
        return f"patch_embed.{2 * (int(m[1]) - 1)}.c.weight"
    if m := re.fullmatch(r"stem\.conv(\d)\.bn\.(.+)", timm_key):
        return f"patch_embed.{2 * (int(m[1]) - 1)}.bn.{m[2]}"
    if m := re.fullmatch(r"(head|head_dist)\.(bn|linear)\.(.+)", timm_key):
        return f"{m[1]}.{'l' if m[2] == 'linear' else 'bn'}.{m[3]}"
    m = re.fullmatch(r"(stages\.\d\.(?:blocks\.\d+|downsample))\.(attn|attn_downsample|mlp)\.(.+)", timm_key)
    assert m, timm_key
    module = f"{m[1]}.{m[2]}"
    index = block_index.setdefault(module, len(block_index))
    rest = m[3].replace("linear.", "c.").replace("proj.ln.", "proj.1.").replace("q.ln.", "q.1.")
    rest = rest.replace("ln1.", "0.").replace("ln2.", "2.")
    prefix = f"blocks.{index}" if m[2] == "attn_downsample" else f"blocks.{index}.m"
    return f"{prefix}.{rest}"


def test_parse_weights_forms(tmp_path: Path) -> None:
    assert parse_weights("pretrained").kind == "pretrained"
    assert parse_weights("random").seed == 0 and parse_weights("random:7").seed == 7
    path = tmp_path / "w.pth"
    path.write_bytes(b"x")
    assert parse_weights(str(path)).path == path.resolve()
    with pytest.raises(WeightsError, match="seed after 'random:' must be an integer"):
        parse_weights("random:abc")
    with pytest.raises(WeightsError, match=r"weights file .*missing\.pth does not exist"):
        parse_weights(str(tmp_path / "missing.pth"))


def test_random_weights_are_reproducible_across_calls() -> None:
    first = create_model(VARIANT, parse_weights("random:5")).state_dict()
    second = create_model(VARIANT, parse_weights("random:5")).state_dict()
    other = create_model(VARIANT, parse_weights("random:6")).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["stem.conv1.linear.weight"], other["stem.conv1.linear.weight"])


def test_timm_state_dict_round_trips_through_pth_and_safetensors(tmp_path: Path, timm_state) -> None:
    from safetensors.torch import save_file

    torch.save(timm_state, tmp_path / "w.pth")
    save_file({k: v.contiguous() for k, v in timm_state.items()}, str(tmp_path / "w.safetensors"))
    for name in ("w.pth", "w.safetensors"):
        loaded = create_model(VARIANT, parse_weights(str(tmp_path / name))).state_dict()
        assert all(torch.equal(loaded[k], timm_state[k]) for k in timm_state), name


def test_official_release_layout_is_converted(tmp_path: Path, timm_state) -> None:
    blocks: dict[str, int] = {}
    official = {official_key(k, blocks): v for k, v in timm_state.items()}
    # The release also stores the (non-persistent in timm) bias index buffers.
    official["blocks.0.m.attention_bias_idxs"] = torch.zeros(196, 196, dtype=torch.long)
    torch.save({"model": official}, tmp_path / "LeViT-128S.pth")
    loaded = create_model(VARIANT, parse_weights(str(tmp_path / "LeViT-128S.pth"))).state_dict()
    assert all(torch.equal(loaded[k], timm_state[k]) for k in timm_state)


def test_official_layout_of_a_mismatched_checkpoint_is_refused(timm_state) -> None:
    blocks: dict[str, int] = {}
    official = {official_key(k, blocks): v for k, v in timm_state.items()}
    official.pop("blocks.2.m.qkv.c.weight")  # second attention (blocks alternate attention, MLP)
    with pytest.raises(WeightsError, match="tensors in the original LeViT layout"):
        convert_official_state_dict(official, Path("x.pth"))


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path: Path, timm_state) -> None:
    state = dict(timm_state)
    state.pop("head.linear.bias")
    state["extra.weight"] = torch.zeros(1)
    state["stem.conv1.linear.weight"] = torch.zeros(1, 2, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsError) as error:
        create_model(VARIANT, parse_weights(str(tmp_path / "bad.pth")))
    message = str(error.value)
    assert "bad.pth" in message and "head.linear.bias" in message and "extra.weight" in message
    assert "stem.conv1.linear.weight: file (1, 2, 3, 3)" in message


def test_corrupt_file_and_pickled_objects_are_refused(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    truncated = tmp_path / "truncated.pth"
    torch.save({"w": torch.zeros(8)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    for path in (corrupt, truncated, damaged):
        with pytest.raises(WeightsError) as error:
            read_checkpoint(path)
        message = str(error.value)
        assert f"weights file {path} is not a readable checkpoint" in message
        assert "accepted: a state dict of tensors saved with torch.save" in message and ".safetensors" in message
        assert "weights_only" not in message  # torch's advice to unpickle the file is not ours to give
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "args": Path("/etc")}, pickled)  # arbitrary object
    with pytest.raises(WeightsError, match=r"pickled.pth is not a readable checkpoint \(it pickles a Python object "
                                           r"\(pathlib.PosixPath\) besides tensors.*save model.state_dict\(\)"):
        read_checkpoint(pickled)


def test_pretrained_without_network_is_a_clear_error(monkeypatch) -> None:
    import timm

    def offline(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("network unreachable")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(WeightsError, match="could not load timm's pretrained weights for LeViT-128S.*network unreachable"):
        create_model(VARIANT, parse_weights("pretrained"))
