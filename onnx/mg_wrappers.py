"""Thin torch modules that re-run MusicGen's computation with the transformers submodules' own weights.

Each wrapper is exported to one ONNX graph of the bundle (see docs/BUNDLE.md). They exist only so the
graphs get clean, named inputs and outputs (residuals, component outputs, intervention inputs, a
host-owned KV cache); the arithmetic is the one of transformers' MusicGen, T5 and EnCodec modules.
They are never used to produce reference outputs (onnx/reference.py runs transformers itself).

Shape arithmetic is written so that the TorchScript tracer records it in the graph (sizes taken from
tensors, no Python branches on sizes), so every batch/time dimension stays dynamic.
"""

import math

import numpy as np

import torch
from torch import nn
from torch.onnx.operators import shape_as_tensor
from transformers.models.encodec.modeling_encodec import (
    EncodecConv1d,
    EncodecConvTranspose1d,
    EncodecLSTM,
    EncodecResnetBlock,
)
from transformers.models.t5.modeling_t5 import T5Attention

NEG = torch.finfo(torch.float32).min
# The runtime's own operators (src/runtime), used by the CPU copies of the decoder graphs.
CPU_DOMAIN = "musicgen_interp"


# ----------------------------------------------------------------------------------------- text


class TextEncoder(nn.Module):
    """T5 encoder: raw block outputs, their final-LayerNorm versions, and the last normed state."""

    def __init__(self, t5_encoder_model):
        super().__init__()
        stack = t5_encoder_model.encoder
        cfg = t5_encoder_model.config
        self.embed = stack.embed_tokens
        self.blocks = stack.block
        self.final_ln = stack.final_layer_norm
        self.n_heads = cfg.num_heads
        self.d_kv = cfg.d_kv
        attn0 = stack.block[0].layer[0].SelfAttention
        self.rel_bias = attn0.relative_attention_bias
        # Relative-position buckets, computed once here with transformers' own function so the graph holds
        # exactly the buckets torch computes (a log in the graph could round differently at bucket edges).
        # Every |relative position| >= max_distance falls into the same bucket, so a table over
        # [-max_distance, max_distance] covers any text length.
        md = cfg.relative_attention_max_distance
        rel = torch.arange(-md, md + 1, dtype=torch.long)
        buckets = T5Attention._relative_position_bucket(
            rel, bidirectional=True, num_buckets=cfg.relative_attention_num_buckets, max_distance=md
        )
        self.max_distance = md
        self.register_buffer("bucket_table", buckets, persistent=False)

    def _attention(self, att, x, bias):
        b, s = x.shape[0], x.shape[1]
        q = att.q(x).view(b, s, self.n_heads, self.d_kv).transpose(1, 2)
        k = att.k(x).view(b, s, self.n_heads, self.d_kv).transpose(1, 2)
        v = att.v(x).view(b, s, self.n_heads, self.d_kv).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(2, 3)) + bias  # T5 does not scale the scores
        probs = torch.softmax(scores, dim=-1)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, s, self.n_heads * self.d_kv)
        return att.o(out)

    def forward(self, input_ids, attention_mask):
        s = input_ids.shape[1]
        pos = torch.arange(s, dtype=torch.long)
        rel = pos[None, :] - pos[:, None]  # memory - context, [S, S]
        rel = torch.clamp(rel, -self.max_distance, self.max_distance) + self.max_distance
        bias = self.rel_bias(self.bucket_table[rel]).permute(2, 0, 1).unsqueeze(0)  # [1, H, S, S]
        keep = attention_mask[:, None, None, :] > 0
        bias = torch.where(keep, bias, torch.full_like(bias, NEG))  # [B, H, S, S]

        h = self.embed(input_ids)
        raw = [h]
        for blk in self.blocks:
            sa = blk.layer[0]
            h = h + self._attention(sa.SelfAttention, sa.layer_norm(h), bias)
            h = blk.layer[-1](h)  # T5LayerFF: h + DenseReluDense(layer_norm(h))
            raw.append(h)
        hidden_states = torch.stack(raw, dim=0)
        normed = self.final_ln(hidden_states)
        last = self.final_ln(h)
        return last, hidden_states, normed


# -------------------------------------------------------------------------------------- decoder


def needs_projection(model):
    """Mirrors MusicgenForConditionalGeneration: enc_to_dec_proj exists and is applied iff this holds."""
    return (
        model.text_encoder.config.hidden_size != model.decoder.config.hidden_size
        and model.decoder.config.cross_attention_hidden_size is None
    )


def decoder_stack(model):
    return model.decoder.model.decoder  # MusicgenForConditionalGeneration -> ForCausalLM -> Model -> Decoder


class CrossKV(nn.Module):
    """enc_to_dec_proj, the mask multiply transformers applies after it, and every layer's cross K/V."""

    def __init__(self, model):
        super().__init__()
        dec = decoder_stack(model)
        self.proj = model.enc_to_dec_proj if needs_projection(model) else None
        self.layers = dec.layers
        self.n_heads = model.decoder.config.num_attention_heads
        self.head_dim = model.decoder.config.hidden_size // self.n_heads

    def forward(self, encoder_hidden_states, encoder_attention_mask):
        e = encoder_hidden_states
        if self.proj is not None:
            e = self.proj(e)
        # MusicgenForConditionalGeneration.forward: encoder_hidden_states * attention_mask[..., None]
        e = e * encoder_attention_mask[..., None].to(e.dtype)
        b, s = e.shape[0], e.shape[1]
        keys, values = [], []
        for layer in self.layers:
            att = layer.encoder_attn
            keys.append(att.k_proj(e).view(b, s, self.n_heads, self.head_dim).transpose(1, 2))
            values.append(att.v_proj(e).view(b, s, self.n_heads, self.head_dim).transpose(1, 2))
        return torch.stack(keys, dim=0), torch.stack(values, dim=0)


class DecoderEmbed(nn.Module):
    """Sum of the K codebook embeddings plus the sinusoidal position of past_len + t."""

    def __init__(self, model):
        super().__init__()
        dec = decoder_stack(model)
        self.embed_tokens = dec.embed_tokens
        self.num_codebooks = dec.num_codebooks
        dim = dec.embed_positions.embedding_dim
        self.dim = dim
        half = dim // 2
        # the frequencies exactly as MusicgenSinusoidalPositionalEmbedding.get_embedding computes them
        emb = math.log(10000) / (half - 1)
        freq = torch.exp(torch.arange(half, dtype=torch.int64).float() * -emb)
        self.register_buffer("freq", freq, persistent=False)

    def forward(self, input_ids, past_len):
        h = self.embed_tokens[0](input_ids[:, 0])
        for k in range(1, self.num_codebooks):
            h = h + self.embed_tokens[k](input_ids[:, k])
        t = input_ids.shape[2]
        pos = (torch.arange(t, dtype=torch.int64) + past_len).float()
        ang = pos[:, None] * self.freq[None, :]
        pe = torch.cat([torch.cos(ang), torch.sin(ang)], dim=1)
        if self.dim % 2 == 1:
            pe = torch.cat([pe, torch.zeros_like(pe[:, :1])], dim=1)
        return h + pe[None]


def _intervene(out, add, replace, mask):
    return out * (1.0 - mask) + replace * mask + add


def _attention_lengths(past_len, b, t):
    """CachedSelfAttention's length inputs for b rows of t new positions over past_len cached ones:
    (seqlens_k [b] int32 = total_len - 1, total_len int32 = past_len + t)."""
    total = (past_len + t).to(torch.int32)
    return (total - 1).reshape(1).expand(b), total


class CachedSelfAttention(torch.autograd.Function):
    """Causal self-attention of this call's positions over the KV cache.

    q, k, v: [B, T, D] (projections, heads side by side); past_key / past_value: the cache
    [B, H, C, hd] (C >= total_len); seqlens_k: [B] int32 = total_len - 1; total_len: int32 scalar =
    past_len + T. Returns (attention output [B, T, D] before out_proj, present_key, present_value),
    where present = past with this call's keys / values written at past_len.

    Exported as onnxruntime's GroupQueryAttention (com.microsoft, as many key/value heads as query
    heads). When the host binds each present output to its past buffer, the op writes the new keys and
    values in place and reads the cache once per call: no per-step copy of the cache and no transposed
    copy of the keys. The forward below is the same arithmetic in torch (used when tracing and by
    the exporter's own check).
    """

    @staticmethod
    def forward(ctx, q, k, v, past_key, past_value, seqlens_k, total_len, num_heads, scale):
        b, t, d = q.shape
        hd = d // num_heads
        total = int(total_len)
        past = total - t
        heads = lambda x: x.view(b, t, num_heads, hd).transpose(1, 2)  # noqa: E731
        present_key = past_key.clone()
        present_value = past_value.clone()
        present_key[:, :, past:total] = heads(k)
        present_value[:, :, past:total] = heads(v)
        s = torch.matmul(heads(q), present_key[:, :, :total].transpose(2, 3)) * scale  # [B, H, T, total]
        causal = torch.arange(total)[None, :] <= (past + torch.arange(t))[:, None]
        s = torch.where(causal, s, torch.full_like(s, NEG))
        o = torch.matmul(torch.softmax(s, dim=-1), present_value[:, :, :total])
        return o.transpose(1, 2).reshape(b, t, d), present_key, present_value

    @staticmethod
    def symbolic(g, q, k, v, past_key, past_value, seqlens_k, total_len, num_heads, scale):
        out, present_key, present_value = g.op(
            "com.microsoft::GroupQueryAttention",
            q,
            k,
            v,
            past_key,
            past_value,
            seqlens_k,
            total_len,
            num_heads_i=num_heads,
            kv_num_heads_i=num_heads,
            scale_f=scale,
            outputs=3,
        )
        out.setType(q.type())
        present_key.setType(past_key.type())
        present_value.setType(past_value.type())
        return out, present_key, present_value


class StreamAttention(torch.autograd.Function):
    """The CPU copy's cached self-attention: the arithmetic of CachedSelfAttention, exported as the
    runtime's own `musicgen_interp::CachedAttention` (q, k, v, past_key, past_value, past_len) ->
    (out, present_key, present_value). It takes past_len itself (no seqlens to compute in the graph)
    and any number of new positions for any number of rows over a non-empty cache."""

    @staticmethod
    def forward(ctx, q, k, v, past_key, past_value, past_len, num_heads, scale):
        seqlens_k, total = _attention_lengths(past_len, q.shape[0], q.shape[1])
        return CachedSelfAttention.forward(None, q, k, v, past_key, past_value, seqlens_k, total, num_heads, scale)

    @staticmethod
    def symbolic(g, q, k, v, past_key, past_value, past_len, num_heads, scale):
        out, present_key, present_value = g.op(
            f"{CPU_DOMAIN}::CachedAttention", q, k, v, past_key, past_value, past_len,
            num_heads_i=num_heads, scale_f=scale, outputs=3,
        )
        out.setType(q.type())
        present_key.setType(past_key.type())
        present_value.setType(past_value.type())
        return out, present_key, present_value


def _cross_attention(q, cross_key, cross_value, encoder_attention_mask, num_heads, scale):
    """Cross-attention over precomputed keys/values; a row whose mask is all zeros gets 0, as torch's
    scaled_dot_product_attention (transformers' default) gives for fully masked rows."""
    b, t = q.shape[0], q.shape[1]
    q = q.view(b, t, num_heads, -1).transpose(1, 2)
    s = torch.matmul(q, cross_key.transpose(2, 3)) * scale  # [B, H, T, S]
    keep = encoder_attention_mask[:, None, None, :] > 0
    s = torch.where(keep, s, torch.full_like(s, NEG))
    probs = torch.softmax(s, dim=-1)
    row_any = (encoder_attention_mask.sum(dim=-1) > 0).to(probs.dtype)[:, None, None, None]
    o = torch.matmul(probs * row_any, cross_value)
    return o.transpose(1, 2).reshape(b, t, -1)


class StreamCrossAttention(torch.autograd.Function):
    """_cross_attention as the runtime's `musicgen_interp::CrossAttention` (q, cross_key, cross_value,
    encoder_attention_mask) -> out, for the CPU copy."""

    @staticmethod
    def forward(ctx, q, cross_key, cross_value, encoder_attention_mask, num_heads, scale):
        return _cross_attention(q, cross_key, cross_value, encoder_attention_mask, num_heads, scale)

    @staticmethod
    def symbolic(g, q, cross_key, cross_value, encoder_attention_mask, num_heads, scale):
        out = g.op(
            f"{CPU_DOMAIN}::CrossAttention", q, cross_key, cross_value, encoder_attention_mask,
            num_heads_i=num_heads, scale_f=scale,
        )
        out.setType(q.type())
        return out


class Intervene(torch.autograd.Function):
    """residual + (out * (1 - mask) + replace * mask + add), as the runtime's
    `musicgen_interp::Intervene` for the CPU copy (one node where the plain graph has six)."""

    @staticmethod
    def forward(ctx, residual, out, add, replace, mask):
        return residual + _intervene(out, add, replace, mask)

    @staticmethod
    def symbolic(g, residual, out, add, replace, mask):
        y = g.op(f"{CPU_DOMAIN}::Intervene", residual, out, add, replace, mask)
        y.setType(residual.type())
        return y


class DecoderLayer(nn.Module):
    """One MusicgenDecoderLayer with a host-owned self-attention cache and component interventions."""

    def __init__(self, layer, num_heads):
        super().__init__()
        self.layer = layer
        self.n_heads = num_heads
        self.head_dim = layer.embed_dim // num_heads
        self.dim = layer.embed_dim
        # True while exporting the CPU copy: attention, cross-attention and the interventions become
        # the runtime's own operators (same arithmetic, far fewer nodes).
        self.cpu_ops = False

    def _edit(self, residual, out, add, replace, mask):
        if self.cpu_ops:
            return Intervene.apply(residual, out, add, replace, mask)
        return residual + _intervene(out, add, replace, mask)

    def forward(
        self,
        hidden,
        past_key,
        past_value,
        past_len,
        cross_key,
        cross_value,
        encoder_attention_mask,
        attn_add,
        attn_replace,
        attn_mask,
        cross_attn_add,
        cross_attn_replace,
        cross_attn_mask,
        mlp_add,
        mlp_replace,
        mlp_mask,
    ):
        ly = self.layer
        b, t = hidden.shape[0], hidden.shape[1]
        nh = self.n_heads

        # self-attention: cache positions < past_len, then this call's positions causally, one softmax;
        # this call's keys and values go into the cache at past_len (present_key / present_value)
        sa = ly.self_attn
        x = ly.self_attn_layer_norm(hidden)
        q, k, v, scale = sa.q_proj(x), sa.k_proj(x), sa.v_proj(x), float(sa.scaling)
        if self.cpu_ops:
            o, present_key, present_value = StreamAttention.apply(q, k, v, past_key, past_value, past_len, nh, scale)
        else:
            seqlens_k, total = _attention_lengths(past_len, b, t)
            o, present_key, present_value = CachedSelfAttention.apply(q, k, v, past_key, past_value, seqlens_k, total, nh, scale)
        attn_out = sa.out_proj(o)
        h = self._edit(hidden, attn_out, attn_add, attn_replace, attn_mask)

        # cross-attention over the precomputed keys/values
        ca = ly.encoder_attn
        q = ca.q_proj(ly.encoder_attn_layer_norm(h))
        cross = StreamCrossAttention.apply if self.cpu_ops else _cross_attention
        o = cross(q, cross_key, cross_value, encoder_attention_mask, nh, float(ca.scaling))
        cross_out = ca.out_proj(o)
        h = self._edit(h, cross_out, cross_attn_add, cross_attn_replace, cross_attn_mask)

        # MLP
        x = ly.final_layer_norm(h)
        mlp_out = ly.fc2(ly.activation_fn(ly.fc1(x)))
        h = self._edit(h, mlp_out, mlp_add, mlp_replace, mlp_mask)
        return h, attn_out, cross_out, mlp_out, present_key, present_value


class DecoderHead(nn.Module):
    """Final LayerNorm and the K codebook heads, for any residual."""

    def __init__(self, model):
        super().__init__()
        self.ln = decoder_stack(model).layer_norm
        self.heads = model.decoder.lm_heads

    def forward(self, hidden):
        normed = self.ln(hidden)
        logits = torch.stack([head(normed) for head in self.heads], dim=1)
        return normed, logits


# -------------------------------------------------------------------------------------- EnCodec


def _pad1d(x, left, right_fixed, extra, mode):
    """transformers' EncodecConv1d._pad1d (reflect with the zero extension for short inputs, or zeros),
    written as one index gather so no branch on the length is frozen into the graph.
    left, right_fixed: Python ints; extra: the length-dependent right padding, an int64 0-d tensor."""
    length = shape_as_tensor(x)[-1]
    right = right_fixed + extra
    total = left + length + right
    j = torch.arange(total, dtype=torch.int64)
    if mode == "reflect":
        # _pad1d appends max(0, max_pad - length + 1) zeros, reflects, then drops that many at the end
        max_pad = torch.clamp(right, min=left)
        ext = torch.maximum(length, max_pad + 1)
        src = torch.abs(j - left)
        src = torch.where(src >= ext, 2 * (ext - 1) - src, src)
        valid = src < length
    elif mode in ("constant", "zero"):
        src = j - left
        valid = (src >= 0) & (src < length)
    else:
        raise ValueError(f"EnCodec pad_mode {mode!r} is not supported by the exporter (reflect or constant)")
    idx = torch.minimum(torch.clamp(src, min=0), length - 1)
    return torch.index_select(x, -1, idx) * valid.to(x.dtype)


def _conv1d(mod: EncodecConv1d, x):
    conv = mod.conv
    kernel, stride, dilation = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
    kernel = (kernel - 1) * dilation + 1
    padding_total = kernel - stride
    length = shape_as_tensor(x)[-1]
    # transformers: ceil((L - k + pt) / s + 1) - 1 frames -> ideal length ceil(L / s) * s
    extra = (stride - length % stride) % stride
    if mod.causal:
        x = _pad1d(x, padding_total, 0, extra, mod.pad_mode)
    else:
        right = padding_total // 2
        x = _pad1d(x, padding_total - right, right, extra, mod.pad_mode)
    x = conv(x)
    if mod.norm_type == "time_group_norm":
        x = mod.norm(x)
    return x


def _conv_transpose1d(mod: EncodecConvTranspose1d, x):
    conv = mod.conv
    padding_total = conv.kernel_size[0] - conv.stride[0]
    x = conv(x)
    if mod.norm_type == "time_group_norm":
        x = mod.norm(x)
    if mod.causal:
        right = math.ceil(padding_total * mod.trim_right_ratio)
    else:
        right = padding_total // 2
    left = padding_total - right
    return x[..., left:-right] if right > 0 else x[..., left:]


def _resnet(mod: EncodecResnetBlock, x):
    residual = x
    for layer in mod.block:
        x = _conv1d(layer, x) if isinstance(layer, EncodecConv1d) else layer(x)
    shortcut = _conv1d(mod.shortcut, residual) if isinstance(mod.shortcut, EncodecConv1d) else residual
    return shortcut + x


def _run_seanet(layers, x):
    for layer in layers:
        if isinstance(layer, EncodecConv1d):
            x = _conv1d(layer, x)
        elif isinstance(layer, EncodecConvTranspose1d):
            x = _conv_transpose1d(layer, x)
        elif isinstance(layer, EncodecResnetBlock):
            x = _resnet(layer, x)
        elif isinstance(layer, (EncodecLSTM, nn.ELU)):
            x = layer(x)
        else:
            raise TypeError(f"unexpected EnCodec layer {type(layer).__name__}")
    return x


def musicgen_num_quantizers(audio_encoder):
    """The codebooks MusicGen encodes with: EncodecModel.encode's default bandwidth, target_bandwidths[0]."""
    bandwidth = audio_encoder.config.target_bandwidths[0]
    return audio_encoder.quantizer.get_num_quantizers_for_bandwidth(bandwidth)


class EncodecEncode(nn.Module):
    """audio [B,1,N] -> codes [B,K,F], as audio_encoder.encode(audio) (default bandwidth) gives them."""

    def __init__(self, audio_encoder):
        super().__init__()
        self.encoder = audio_encoder.encoder
        self.quantizer = audio_encoder.quantizer
        self.num_quantizers = musicgen_num_quantizers(audio_encoder)

    def forward(self, audio):
        emb = _run_seanet(self.encoder.layers, audio)
        residual = emb
        codes = []
        for layer in self.quantizer.layers[: self.num_quantizers]:
            idx = layer.encode(residual)
            residual = residual - layer.decode(idx)
            codes.append(idx)
        return torch.stack(codes, dim=1)


def _lstm_end(decoder):
    """Index just past the LSTM in EnCodec's decoder: before it, the part that sees the whole sequence;
    after it, a stack of convolutions with a finite receptive field."""
    idx = [i for i, layer in enumerate(decoder.layers) if isinstance(layer, EncodecLSTM)]
    if len(idx) != 1:
        raise TypeError(f"expected one LSTM in EnCodec's decoder, found {len(idx)}")
    return idx[0] + 1


class EncodecDecodeLatent(nn.Module):
    """codes [B,K,F] -> latent [B,C,F]: the quantizer's embeddings summed, the first convolution and
    the LSTM of EnCodec's decoder (frame rate; cheap, and it must see the whole sequence)."""

    def __init__(self, audio_encoder):
        super().__init__()
        self.decoder = audio_encoder.decoder
        self.quantizer = audio_encoder.quantizer
        self.num_quantizers = musicgen_num_quantizers(audio_encoder)
        self.end = _lstm_end(audio_encoder.decoder)

    def forward(self, codes):
        emb = self.quantizer.layers[0].decode(codes[:, 0])
        for k in range(1, self.num_quantizers):
            emb = emb + self.quantizer.layers[k].decode(codes[:, k])
        return _run_seanet(self.decoder.layers[: self.end], emb)


class EncodecDecodeUpsample(nn.Module):
    """latent [B,C,F] -> audio [B,1,F*hop]: the rest of EnCodec's decoder, convolutions only, so the
    host can decode long clips in overlapping chunks with the memory of a short one. Both parts
    together are audio_encoder.decode(codes[None], [None])."""

    def __init__(self, audio_encoder):
        super().__init__()
        self.decoder = audio_encoder.decoder
        self.start = _lstm_end(audio_encoder.decoder)

    def forward(self, latent):
        return _run_seanet(self.decoder.layers[self.start :], latent)


def decode_context_frames(audio_encoder, frames=48):
    """Frames of latent either side that can change an output frame of EncodecDecodeUpsample (its
    receptive field, measured by perturbing one frame), plus a margin of 2."""
    import torch

    up = EncodecDecodeUpsample(audio_encoder).eval()
    hop = int(np.prod(audio_encoder.config.upsampling_ratios))
    channels = EncodecDecodeLatent(audio_encoder).eval()(torch.zeros(1, musicgen_num_quantizers(audio_encoder), 1, dtype=torch.long)).shape[1]
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, channels, frames, generator=g)
    mid = frames // 2
    with torch.no_grad():
        base = up(z)
        z[:, :, mid] += 1.0
        changed = torch.nonzero((up(z) - base).abs()[0, 0] > 0).flatten()
    lo, hi = int(changed.min()), int(changed.max())
    radius = max(mid * hop - lo, hi - ((mid + 1) * hop - 1))
    return int(np.ceil(radius / hop)) + 2, hop
