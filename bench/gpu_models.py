"""Full-size random-weight Wan pipelines built from the published configs (no download), for the GPU check.

The shapes are those of the checkpoints' own config files (transformer/config.json, text_encoder, image_encoder,
vae of Wan-AI/Wan2.1-I2V-14B-480P-Diffusers and Wan-AI/Wan2.2-I2V-A14B-Diffusers), so every kernel runs at the
production size; the weights are random, so the frames are noise and only time, memory and energy mean anything.
On a machine without CUDA the check uses the tiny models of models.tiny instead (mechanics only).
"""
from __future__ import annotations

import copy
from typing import Any

WAN21_I2V_14B = dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=36,
                     out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
                     qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=1280, added_kv_proj_dim=5120,
                     rope_max_seq_len=1024)
WAN22_I2V_A14B = {**WAN21_I2V_14B, "image_dim": None, "added_kv_proj_dim": None}  # each of the two experts
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
                layer_norm_epsilon=1e-6, tie_word_embeddings=False)
CLIP_VIT_H14 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                    patch_size=14, image_size=224, projection_dim=1024, hidden_act="gelu", layer_norm_eps=1e-5)
TEXT_TOKENS = {True: 512, False: 32}  # Wan's trained text length; the tiny encoder's
SIZES = {"wan2.1-i2v-480p": "Wan2.1-I2V-14B (40 blocks, dim 5120) + UMT5-XXL + CLIP ViT-H/14 + Wan VAE",
         "wan2.2-i2v-a14b": "Wan2.2-I2V-A14B (two 40-block dim-5120 experts, boundary 0.9) + UMT5-XXL + Wan VAE"}


def _scheduler(shift: float) -> Any:
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                                   flow_shift=shift)


def full(name: str, shift: float = 3.0) -> Any:
    """A full-size random-weight pipeline of `name` on the GPU: the DiT(s) and UMT5 in bfloat16, VAE in float32."""
    import torch
    from diffusers import AutoencoderKLWan, WanImageToVideoPipeline, WanTransformer3DModel
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection, UMT5Config,
                              UMT5EncoderModel)

    from models import tiny

    two = name == "wan2.2-i2v-a14b"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"), torch.no_grad():
            text_encoder = UMT5EncoderModel(UMT5Config(**UMT5_XXL))
            experts = [WanTransformer3DModel(**(WAN22_I2V_A14B if two else WAN21_I2V_14B)) for _ in range(1 + two)]
    finally:
        torch.set_default_dtype(previous)
    with torch.device("cuda"), torch.no_grad():  # float32, as diffusers' Wan example loads them
        image_encoder = None if two else CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_VIT_H14))
        vae = AutoencoderKLWan()  # the defaults are Wan2.1's VAE (also Wan2.2 A14B's)
    for m in (text_encoder, vae, image_encoder, *experts):
        if m is not None:
            m.eval().requires_grad_(False)
    extra = {"transformer_2": experts[1], "boundary_ratio": 0.9} if two else {
        "image_encoder": image_encoder, "image_processor": CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224})}
    pipe = WanImageToVideoPipeline(tokenizer=tiny.t5_tokenizer(), text_encoder=text_encoder, vae=vae,
                                   transformer=experts[0], scheduler=_scheduler(shift), **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_pipe(name: str, shift: float = 3.0) -> Any:
    """The tiny random stand-in of `name` (a private copy: options may change its modules)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from models import tiny

    pipe = copy.deepcopy(tiny.wan22_i2v_a14b(0) if name == "wan2.2-i2v-a14b" else tiny.wan_i2v(0))
    pipe = type(pipe)(**{**pipe.components, "scheduler": FlowMatchEulerDiscreteScheduler(shift=shift)},
                      **({"boundary_ratio": 0.9} if name == "wan2.2-i2v-a14b" else {}))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def shapes(name: str, gpu: bool) -> Any:
    """The DiT of `name` with its real shapes and no memory (meta device, bfloat16) on GPU; the tiny one on CPU."""
    if not gpu:
        from models import tiny

        return (tiny.wan22_i2v_a14b(0) if name == "wan2.2-i2v-a14b" else tiny.wan_i2v(0)).transformer
    import torch
    from diffusers import WanTransformer3DModel

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            return WanTransformer3DModel(**(WAN22_I2V_A14B if name == "wan2.2-i2v-a14b" else WAN21_I2V_14B))
    finally:
        torch.set_default_dtype(previous)


def build(name: str, gpu: bool, shift: float = 3.0) -> Any:
    return full(name, shift) if gpu else tiny_pipe(name, shift)


def backend_class(name: str, gpu: bool) -> type:
    """Our registered backend class for `name`, building its pipeline here instead of loading weights."""
    import dataclasses

    from models.registry import resolve

    base = resolve("video", name)

    class Checked(base):  # type: ignore[misc, valid-type]
        spec = dataclasses.replace(base.spec, model_id=None)

        def __init__(self, **options: Any) -> None:
            options.setdefault("max_sequence_length", TEXT_TOKENS[gpu])  # the real model's 512 on the GPU
            super().__init__(**options)

        def _build(self) -> Any:
            return build(name, gpu, 3.0)  # the backend's `shift` option replaces the scheduler as in production

        @property
        def model_label(self) -> str:
            return f"random weights, {'full-size ' + base.spec.model_id if gpu else 'tiny'} config"

    Checked.__name__ = f"Checked{base.__name__}"
    return Checked
