"""Architecture-exact tiny random models, built offline and deterministically from a seed, for tests and CPU runs.

Every builder uses the real classes (diffusers' WanPipeline/WanImageToVideoPipeline/FluxPipeline/
FluxKontextPipeline/StableDiffusionXLPipeline with an IP-Adapter, transformers' UMT5/T5/CLIP/Qwen2/VITS/Marian,
insightface's ArcFace IResNet exported to ONNX) at diffusers-fast-test sizes, with random weights drawn
under a forked, seeded RNG and tokenizers built from an in-memory vocabulary (SentencePiece models for
Marian are trained in memory on a fixed corpus): nothing is downloaded. Results are cached per process,
so a resident Ray actor builds each model once; `BUILDS` counts the builds.
"""
from __future__ import annotations

import atexit
import io
import json
import shutil
import string
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Callable

BUILDS: Counter[str] = Counter()  # kind -> models built in this process
_CACHE: dict[tuple[str, int], Any] = {}
_LOCK = threading.Lock()

# A fixed character inventory: ASCII plus common hanzi (the most frequent characters and a few names).
HANZI = ("的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出而要于就下得可你年生自会那后能对着事其里所去"
         "行过家十用发天如然作方成者多日都三小军二无同么经法当起与好看学进种将还分此心前面又定见只主没公从她谁吗吧呢"
         "签合同今从替身总裁办室夜晚妈手术费付记住演完月自由裙穿身后声笑城墙灯笼风林晓顾辰苏曼")
CHARS = string.ascii_letters + string.digits + string.punctuation + HANZI + "，。！？、：；“”‘’（）—…"
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def cached(kind: str, seed: int, build: Callable[[int], Any]) -> Any:
    """Build `kind` for `seed` once per process (thread-safe) and return the cached object after."""
    key = (kind, int(seed))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _seeded(build, int(seed))
            BUILDS[kind] += 1
        return _CACHE[key]


def clear_cache() -> None:
    """Forget every cached model (the next call builds again, as a fresh process would)."""
    with _LOCK:
        _CACHE.clear()


def _seeded(build: Callable[[int], Any], seed: int) -> Any:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(seed)


def _eval(*modules: Any) -> None:
    for m in modules:
        m.eval().requires_grad_(False)


# ---------------------------------------------------------------- tokenizers (in-memory vocabularies)

def t5_tokenizer() -> Any:
    """A T5/UMT5 Unigram tokenizer over CHARS (the class Wan and FLUX load for their T5 encoders)."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    vocab += [(c, -2.0) for c in dict.fromkeys(CHARS)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def _byte_alphabet() -> list[str]:
    from tokenizers.pre_tokenizers import ByteLevel

    return sorted(ByteLevel.alphabet())


def clip_tokenizer() -> Any:
    """A CLIP byte-level BPE tokenizer with no merges (every byte a token), 77 positions as in CLIP."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for tok in _byte_alphabet() + [b + "</w>" for b in _byte_alphabet()] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(tok, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def byte_bpe_tokenizer() -> Any:
    """A Qwen2 byte-level BPE tokenizer with no merges and a ChatML chat template: encodes any text."""
    from transformers import Qwen2Tokenizer

    vocab = {b: i for i, b in enumerate(_byte_alphabet())}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], model_max_length=4096)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def vits_tokenizer(folder: Path) -> Any:
    """A VITS/MMS character tokenizer: vocab.json (lowercase letters, digits, punctuation) written to `folder`."""
    from transformers import VitsTokenizer

    chars = ["<pad>", " "] + list(string.ascii_lowercase + string.digits + "'.,?!-")
    (folder / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(chars)}), encoding="utf-8")
    return VitsTokenizer(vocab_file=str(folder / "vocab.json"), phonemize=False, add_blank=True,
                         normalize=True, pad_token="<pad>", unk_token="<pad>")


def _train_spm(corpus: list[str]) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, vocab_size=len(set("".join(corpus))) + 8,
        model_type="char", character_coverage=1.0, hard_vocab_limit=False, unk_id=0, bos_id=-1,
        eos_id=-1, pad_id=-1, minloglevel=2, num_threads=1)
    return model.getvalue()


def marian_tokenizer(folder: Path) -> Any:
    """A MarianTokenizer from SentencePiece char models trained in memory on CHARS (milliseconds)."""
    from transformers import MarianTokenizer

    corpus = [CHARS[i:i + 40] for i in range(0, len(CHARS), 40)] + ["Lin Xiao signed it.", "你好，顾辰。"]
    spm_bytes = _train_spm(corpus)
    for side in ("source", "target"):
        (folder / f"{side}.spm").write_bytes(spm_bytes)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=spm_bytes)
    vocab = {"</s>": 0, "<unk>": 1}
    for i in range(sp.get_piece_size()):
        vocab.setdefault(sp.id_to_piece(i), len(vocab))
    vocab["<pad>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    return MarianTokenizer(source_spm=str(folder / "source.spm"), target_spm=str(folder / "target.spm"),
                           vocab=str(folder / "vocab.json"), model_max_length=512)


def _tmpdir(kind: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"microdrama-tiny-{kind}-"))
    atexit.register(shutil.rmtree, path, True)
    return path


# ---------------------------------------------------------------- video: Wan2.1

def _umt5(vocab_size: int) -> Any:
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                       num_heads=4, relative_attention_num_buckets=8))


def _wan_vae() -> Any:
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True])


def _wan_transformer(in_channels: int, image_dim: int | None) -> Any:
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                 in_channels=in_channels, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32,
                                 num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                 rope_max_seq_len=32, image_dim=image_dim)


def _build_wan_t2v(seed: int) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    tok = t5_tokenizer()
    text_encoder, vae, transformer = _umt5(len(tok)), _wan_vae(), _wan_transformer(16, None)
    _eval(text_encoder, vae, transformer)
    pipe = WanPipeline(tokenizer=tok, text_encoder=text_encoder, vae=vae, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _build_wan_i2v(seed: int) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    from transformers.models.clip import CLIPImageProcessorPil

    tok = t5_tokenizer()
    text_encoder, vae, transformer = _umt5(len(tok)), _wan_vae(), _wan_transformer(36, 4)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        intermediate_size=16, patch_size=1))
    _eval(text_encoder, vae, transformer, image_encoder)
    pipe = WanImageToVideoPipeline(
        tokenizer=tok, text_encoder=text_encoder, vae=vae, transformer=transformer, image_encoder=image_encoder,
        image_processor=CLIPImageProcessorPil(crop_size=32, size=32),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _build_wan22_i2v_a14b(seed: int) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline

    tok = t5_tokenizer()
    # Wan2.2 I2V A14B's layout: two experts (high noise above the boundary, low noise below), no CLIP encoder
    text_encoder, vae = _umt5(len(tok)), _wan_vae()
    transformer, transformer_2 = _wan_transformer(36, None), _wan_transformer(36, None)
    _eval(text_encoder, vae, transformer, transformer_2)
    pipe = WanImageToVideoPipeline(tokenizer=tok, text_encoder=text_encoder, vae=vae, transformer=transformer,
                                   transformer_2=transformer_2, boundary_ratio=0.9,
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def wan_t2v(seed: int = 0) -> Any:
    """Tiny Wan2.1 text-to-video pipeline (UMT5 encoder, Wan VAE, 2-layer Wan DiT, flow-match Euler)."""
    return cached("wan-t2v", seed, _build_wan_t2v)


def wan_i2v(seed: int = 0) -> Any:
    """Tiny Wan2.1 image-to-video pipeline (as t2v plus a CLIP vision encoder; 36 input channels)."""
    return cached("wan-i2v", seed, _build_wan_i2v)


def wan22_i2v_a14b(seed: int = 0) -> Any:
    """Tiny Wan2.2 I2V A14B pipeline: two Wan DiT experts split at boundary_ratio 0.9, no image encoder."""
    return cached("wan22-i2v-a14b", seed, _build_wan22_i2v_a14b)


def wan_lora(transformer: Any, path: Path, *, rank: int = 4, alpha: float | None = None, seed: int = 0,
             std: float = 0.02) -> Path:
    """A random LoRA for `transformer` (any Wan DiT size) saved in the original Wan / lightx2v key format
    (``diffusion_model.blocks.N.self_attn.q.lora_down.weight``, ``….lora_up.weight``, ``….alpha``), the
    format of lightx2v's step-distillation LoRAs, which diffusers' `load_lora_weights` converts."""
    import torch
    from safetensors.torch import save_file

    names = {"self_attn": ("attn1", ("q", "k", "v", "o")), "cross_attn": ("attn2", ("q", "k", "v", "o"))}
    proj = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0"}
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, Any] = {}

    def add(key: str, linear: Any) -> None:
        out_f, in_f = linear.weight.shape
        sd[f"diffusion_model.{key}.lora_down.weight"] = torch.randn(rank, in_f, generator=g) * std
        sd[f"diffusion_model.{key}.lora_up.weight"] = torch.randn(out_f, rank, generator=g) * std
        sd[f"diffusion_model.{key}.alpha"] = torch.tensor(float(alpha if alpha is not None else rank))

    for i, block in enumerate(transformer.blocks):
        for ours, (theirs, parts) in names.items():
            attn = getattr(block, theirs)
            for part in parts:
                add(f"blocks.{i}.{ours}.{part}", attn.get_submodule(proj[part]))
        add(f"blocks.{i}.ffn.0", block.ffn.net[0].proj)
        add(f"blocks.{i}.ffn.2", block.ffn.net[2])
    dtype = next(transformer.parameters()).dtype
    save_file({k: v.to(dtype).contiguous() for k, v in sd.items()}, str(path))
    return Path(path)


def _ltx_components() -> dict[str, Any]:
    """T5 encoder, LTX-Video VAE (8× spatial and temporal compression: 8k+1 frames, sizes /32) and a 1-layer
    LTX DiT, the shapes of diffusers' own fast tests with one more scaling level."""
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    tok = t5_tokenizer()
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                           num_heads=4, relative_attention_num_buckets=8))
    transformer = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                                             num_attention_heads=4, attention_head_dim=8, cross_attention_dim=32,
                                             num_layers=1, caption_channels=32)
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=1,
        patch_size_t=1, encoder_causal=True, decoder_causal=False)
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    _eval(text_encoder, transformer, vae)
    return {"tokenizer": tok, "text_encoder": text_encoder, "transformer": transformer, "vae": vae,
            "scheduler": FlowMatchEulerDiscreteScheduler()}


def _build_ltx(seed: int, image: bool) -> Any:
    from diffusers import LTXImageToVideoPipeline, LTXPipeline

    pipe = (LTXImageToVideoPipeline if image else LTXPipeline)(**_ltx_components())  # seeded by `cached`
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ltx_t2v(seed: int = 0) -> Any:
    """Tiny LTX-Video text-to-video pipeline."""
    return cached("ltx-t2v", seed, lambda s: _build_ltx(s, image=False))


def ltx_i2v(seed: int = 0) -> Any:
    """Tiny LTX-Video image-to-video pipeline (the same modules, conditioned on the keyframe)."""
    return cached("ltx-i2v", seed, lambda s: _build_ltx(s, image=True))


# ---------------------------------------------------------------- image: FLUX.1

def _build_flux(seed: int) -> Any:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_tok, t5_tok = clip_tokenizer(), t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])
    eos = clip_tok.convert_tokens_to_ids("<|endoftext|>")
    clip = CLIPTextModel(CLIPTextConfig(
        bos_token_id=clip_tok.convert_tokens_to_ids("<|startoftext|>"), eos_token_id=eos, pad_token_id=eos,
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=len(clip_tok),
        projection_dim=32, max_position_embeddings=77, hidden_act="gelu"))
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8))
    # four blocks: 8× spatial compression as in the real FLUX VAE (16 px per packed latent token)
    vae = AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 8, 8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=1, latent_channels=4, norm_num_groups=4, use_quant_conv=False,
                        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    _eval(transformer, clip, t5, vae)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder=clip, text_encoder_2=t5,
                        tokenizer=clip_tok, tokenizer_2=t5_tok, transformer=transformer, vae=vae)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux(seed: int = 0) -> Any:
    """Tiny FLUX.1 text-to-image pipeline (CLIP + T5 encoders, 1+1-block FLUX transformer, 8× VAE)."""
    return cached("flux", seed, _build_flux)


def _build_flux_kontext(seed: int) -> Any:
    from diffusers import FluxKontextPipeline

    # FLUX.1 Kontext [dev] is the FLUX.1 transformer fed the reference latents as extra sequence tokens:
    # the same modules as FLUX.1 (diffusers' FluxKontextPipeline fast tests use the FLUX dummy components)
    flux_pipe = _build_flux(seed)
    pipe = FluxKontextPipeline(**{k: v for k, v in flux_pipe.components.items()
                                  if k not in ("image_encoder", "feature_extractor")})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux_kontext(seed: int = 0) -> Any:
    """Tiny FLUX.1 Kontext [dev] pipeline: a keyframe conditioned on a reference image."""
    return cached("flux-kontext", seed, _build_flux_kontext)


# ---------------------------------------------------------------- image: SDXL + IP-Adapter

IP_ADAPTER_SUBFOLDER, IP_ADAPTER_WEIGHTS = "sdxl_models", "ip-adapter_sdxl.safetensors"  # h94/IP-Adapter layout


def _build_sdxl(seed: int) -> Any:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tok = clip_tokenizer()
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    text_config = CLIPTextConfig(bos_token_id=tok.convert_tokens_to_ids("<|startoftext|>"), eos_token_id=eos,
                                 pad_token_id=eos, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                 num_hidden_layers=2, vocab_size=len(tok), projection_dim=32, hidden_act="gelu",
                                 max_position_embeddings=77)
    # diffusers' SDXL fast-test UNet (text_time conditioning: 6 × 8 time ids + the 32-d pooled text embedding)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=1)
    vae = AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 8, 8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=1, latent_channels=4, norm_num_groups=4, scaling_factor=0.13025)
    text_encoder, text_encoder_2 = CLIPTextModel(text_config), CLIPTextModelWithProjection(text_config)
    _eval(unet, vae, text_encoder, text_encoder_2)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                       beta_schedule="scaled_linear", timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tok,
                                     tokenizer_2=clip_tokenizer(), unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ip_adapter_folder(unet: Any, folder: Path, *, image_embed_dim: int = 32) -> Path:
    """A random IP-Adapter for `unet` written as h94/IP-Adapter lays out its SDXL adapter
    (``sdxl_models/ip-adapter_sdxl.safetensors`` with ``image_proj.*``/``ip_adapter.N.to_{k,v}_ip`` keys, and
    the CLIP vision encoder under ``sdxl_models/image_encoder``), so diffusers' own `load_ip_adapter` reads it.
    The keys follow diffusers' ``create_ip_adapter_state_dict`` test helper."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cross = unet.config.cross_attention_dim
    sd: dict[str, Any] = {"image_proj.proj.weight": torch.randn(4 * cross, image_embed_dim) * 0.02,
                          "image_proj.proj.bias": torch.zeros(4 * cross),
                          "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
    key_id = 1  # numbered over the cross-attention processors only, 1, 3, 5, … as in the original adapters
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        block = name.split(".")[0]
        out = list(unet.config.block_out_channels)
        hidden = (out[-1] if block == "mid_block" else out[::-1][int(name.split(".")[1])] if block == "up_blocks"
                  else out[int(name.split(".")[1])])
        for kv in ("k", "v"):
            sd[f"ip_adapter.{key_id}.to_{kv}_ip.weight"] = torch.randn(hidden, cross) * 0.02
        key_id += 2
    root = Path(folder) / IP_ADAPTER_SUBFOLDER
    root.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(root / IP_ADAPTER_WEIGHTS))
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, projection_dim=image_embed_dim, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        intermediate_size=37, patch_size=4))
    encoder.save_pretrained(str(root / "image_encoder"))
    return Path(folder)


def _build_sdxl_ip_adapter(seed: int) -> Any:
    pipe = _build_sdxl(seed)
    folder = ip_adapter_folder(pipe.unet, _tmpdir("ip-adapter"))
    pipe.load_ip_adapter(str(folder), subfolder=IP_ADAPTER_SUBFOLDER, weight_name=IP_ADAPTER_WEIGHTS,
                         local_files_only=True)  # the same loader the production backend calls
    _eval(pipe.image_encoder)
    return pipe


def sdxl_ip_adapter(seed: int = 0) -> Any:
    """Tiny SDXL pipeline (two CLIP text encoders, text-time UNet, 8× VAE) with a tiny IP-Adapter loaded
    through diffusers' `load_ip_adapter` from an h94-layout folder (CLIP vision encoder + image projection)."""
    return cached("sdxl-ip-adapter", seed, _build_sdxl_ip_adapter)


# ---------------------------------------------------------------- faces: ArcFace (insightface IResNet) as ONNX

def _iresnet(width: int = 8, embedding: int = 32) -> Any:
    """insightface's IResNet (ArcFace backbone: conv-BN-PReLU stem, IBasicBlocks, BN-dropout-FC-BN head) at
    two stages of one block, for a 112×112 aligned face."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.bn1, self.conv1 = nn.BatchNorm2d(cin, eps=1e-5), nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
            self.bn2, self.prelu = nn.BatchNorm2d(cout, eps=1e-5), nn.PReLU(cout)
            self.conv2, self.bn3 = nn.Conv2d(cout, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout, eps=1e-5)
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, 2, bias=False), nn.BatchNorm2d(cout, eps=1e-5))

        def forward(self, x: Any) -> Any:
            out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
            return out + self.downsample(x)

    class IResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width, eps=1e-5)
            self.prelu = nn.PReLU(width)
            self.layers = nn.Sequential(Block(width, 2 * width), Block(2 * width, 4 * width), Block(4 * width, 4 * width),
                                        Block(4 * width, 4 * width))
            self.bn2 = nn.BatchNorm2d(4 * width, eps=1e-5)
            self.fc = nn.Linear(4 * width * 7 * 7, embedding)
            self.features = nn.BatchNorm1d(embedding, eps=1e-5)

        def forward(self, x: Any) -> Any:
            x = self.layers(self.prelu(self.bn1(self.conv1(x))))
            return self.features(self.fc(torch.flatten(self.bn2(x), 1)))

    return IResNet()


def _build_arcface_onnx(seed: int) -> bytes:
    import torch

    net = _iresnet().eval()
    for m in net.modules():  # random running statistics, as a trained net has (identity BN would be degenerate)
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(1, 3, 112, 112),), buf, dynamo=False, input_names=["input.1"],
                      output_names=["embedding"], dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}})
    return buf.getvalue()


def arcface_onnx(seed: int = 0) -> bytes:
    """A tiny random ArcFace recogniser as an ONNX model (insightface's w600k_r50.onnx interface: input
    ``input.1`` N×3×112×112 normalised as (x − 127.5)/127.5, output an embedding per face), for onnxruntime."""
    return cached("arcface-onnx", seed, _build_arcface_onnx)


# ---------------------------------------------------------------- text: causal LM, Marian, VITS

def _build_causal_lm(seed: int) -> tuple[Any, Any]:
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tok = byte_bpe_tokenizer()
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True, eos_token_id=eos,
        pad_token_id=tok.pad_token_id, bos_token_id=None))
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=tok.pad_token_id)
    _eval(model)
    return model, tok


def causal_lm(seed: int = 0) -> tuple[Any, Any]:
    """Tiny Qwen2-style causal LM and its byte-level tokenizer (with a ChatML template); text is gibberish."""
    return cached("causal-lm", seed, _build_causal_lm)


def _build_marian(seed: int) -> tuple[Any, Any]:
    from transformers import MarianConfig, MarianMTModel

    tok = marian_tokenizer(_tmpdir("marian"))
    model = MarianMTModel(MarianConfig(
        vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=256,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id,
        forced_eos_token_id=tok.eos_token_id))
    _eval(model)
    return model, tok


def marian(seed: int = 0) -> tuple[Any, Any]:
    """Tiny MarianMT encoder-decoder and a real MarianTokenizer (SentencePiece char models)."""
    return cached("marian", seed, _build_marian)


def _build_vits(seed: int) -> tuple[Any, Any]:
    from transformers import VitsConfig, VitsModel

    tok = vits_tokenizer(_tmpdir("vits"))
    # transformers' VitsModelTester sizes, with MMS's 256× upsampling so durations are speech-like
    model = VitsModel(VitsConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64, flow_size=16,
        spectrogram_bins=8, duration_predictor_num_flows=2, duration_predictor_filter_channels=16,
        prior_encoder_num_flows=2, posterior_encoder_num_wavenet_layers=2, upsample_initial_channel=16,
        upsample_rates=[8, 8, 2, 2], upsample_kernel_sizes=[16, 16, 4, 4], resblock_kernel_sizes=[3, 7],
        resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]], sampling_rate=16000))
    _eval(model)
    return model, tok


def vits(seed: int = 0) -> tuple[Any, Any]:
    """Tiny VITS (MMS-TTS architecture, 16 kHz) and its character VitsTokenizer."""
    return cached("vits", seed, _build_vits)


TINY_F5 = {"dim": 32, "depth": 2, "heads": 2, "dim_head": 16, "ff_mult": 2, "text_dim": 16, "conv_layers": 1,
           "text_mask_padding": True, "qk_norm": None, "pe_attn_head": None, "attn_backend": "torch",
           "attn_mask_enabled": False, "checkpoint_activations": False}
TINY_VOCOS = {"backbone": {"input_channels": 100, "dim": 32, "intermediate_dim": 64, "num_layers": 2},
              "head": {"dim": 32, "n_fft": 1024, "hop_length": 256, "padding": "center"}}


def _build_f5(seed: int) -> tuple[Any, Any, dict[str, int]]:
    from models.tts import f5, f5_modules

    import torch

    vocab = f5.vocab_map(f5_modules.packaged_vocab())
    cfm, vocoder = f5.build(vocab, TINY_F5, TINY_VOCOS)
    with torch.no_grad():  # F5 zero-initialises its adaLN and output layers: random, so every layer acts
        for param in cfm.parameters():
            if not param.any():
                param.normal_(0.0, 0.05)
    _eval(cfm, vocoder)
    return cfm, vocoder, vocab


def f5(seed: int = 0) -> tuple[Any, Any, dict[str, int]]:
    """Tiny F5-TTS (the package's DiT + CFM, F5TTS_v1_Base's vocabulary and 100-band 24 kHz mel) and a tiny
    Vocos decoder (VocosBackbone + ISTFTHead), random weights."""
    return cached("f5", seed, _build_f5)
