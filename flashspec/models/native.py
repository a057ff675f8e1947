"""The fast path for Llama-family targets: the Hugging Face module's own weights, our attention and cache.

The cache is static (allocated once per engine, indexed by position, as in gpt-fast), so rolling back is
just moving `length`, and a token tree is one forward with an ancestor mask. Norms, MLPs and the rotary
embedding are the Hugging Face submodules themselves, so a new Llama-like family needs no fork of its code.

With `graphs=True`, decoding steps (chains and token trees of up to GRAPH_TOKENS tokens) take a static-shape
forward instead: every shape depends on the block length n alone, and the block's tokens and positions are written
into fixed device buffers, so nothing in the step reads a Python number off the device. Its attention
(`attention.py`) takes the used length from the positions on the device: on CUDA a split-KV Triton kernel
that reads only the filled part of the cache, on the CPU the reference (SDPA over the cache behind a mask).
A tree's block writes its nodes to the slots after the cache, rotates them by depth, and attends through the
same kernel to the cache before it and its ancestors (each node's path, a fixed [n, n] buffer), read as a
one-token step would find them, so tree arms decode through the same captured, compiled layers as chains and
autoregressive steps, and a node's attention is the autoregressive step's to the bit.
On CUDA each n is captured once as a CUDA graph and replayed, the layer is compiled (one compiled layer
serves all of them), and q/k/v and gate/up each run as one matmul; on the CPU the same static forward runs
uncaptured, which is how tests check it against the eager path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from flashspec.models.attention import IMPLEMENTATIONS, MAX_BLOCK_M, grouped_attention, tree_paths
from flashspec.models.base import CausalLM, Scores, tree_depths, tree_mask
from flashspec.models.fidelity import rope_limit

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
GRAPH_TOKENS = 32  # blocks up to this long are decoding steps (one graph per length and kind); longer: prefill
LAYER_COMPILES = 64  # Dynamo's limit on compiled versions of the layer's code, shared by a process's models


def is_supported(model: PreTrainedModel) -> bool:
    return type(model).__name__ in ARCHITECTURES


@dataclass
class Step:
    """The fixed buffers of an n-token decoding step, and its CUDA graph once captured."""

    tokens: Tensor  # [n] int64, written before each call
    positions: Tensor  # [n] int64, written before each call: the rotary positions
    slots: Tensor  # [n] int64, the cache slots written: the positions, or after the cache for a tree's nodes
    paths: Tensor | None = None  # [n, n] int32 for a tree: node i's ancestors and itself (attention.tree_paths)
    logits: Tensor | None = None  # [n, V] outputs of the last call (the graph's own buffers once captured)
    hidden: Tensor | None = None
    layer_hidden: Tensor | None = None
    graph: torch.cuda.CUDAGraph | None = None


class NativeLlama(CausalLM):
    captured: tuple[int, ...] = ()  # the layers whose inputs Scores.layer_hidden holds (set_capture_layer)
    supports_tree = True

    def __init__(
        self, model: PreTrainedModel, max_context: int, graphs: bool = False, compile: bool | None = None,
        attention: str = "auto", compile_options: dict | None = None,
    ) -> None:
        """`graphs`: decode through the static-shape path (captured on CUDA). `compile`: compile its layer
        (default: when capturing on CUDA), with Inductor's `compile_options` (e.g. coordinate_descent_tuning).
        `attention`: that path's decode attention, triton or reference (auto: triton on CUDA; on the CPU
        triton needs TRITON_INTERPRET=1)."""
        cfg = model.config
        self.model = model.eval()
        self.vocab_size = cfg.vocab_size
        self.max_context = max_context
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.windows = layer_windows(cfg)
        # RoPE whose frequencies depend on the sequence length, in a context long enough for that to matter:
        # every token gets its own (as in generate, one token per forward), so decoding steps take the eager path.
        self.rope_limit = rope_limit(cfg)
        self.per_token_rope = self.rope_limit is not None and max_context > self.rope_limit[1]
        graphs = graphs and not self.per_token_rope
        # Windowed layers mask trees the eager way; so do models with more query heads per KV head than one
        # program of the decode kernel holds (a tree node takes one program, attention.launch).
        self.static_trees = all(w is None for w in self.windows) and self.n_heads // self.n_kv_heads <= MAX_BLOCK_M
        self.prompt_length = 0
        p = next(model.parameters())
        self.device = p.device
        # One tensor per layer, not views of one: a compiled layer then sees the same kind of input each time.
        shape = (self.n_kv_heads, max_context, self.head_dim)
        self.k_cache = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in model.model.layers]
        self.v_cache = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in model.model.layers]
        self.length = 0
        self.graphs = graphs
        self.capture = graphs and self.device.type == "cuda"
        self.steps: dict[int, Step] = {}
        if graphs:
            self.fused = [fuse_layer(layer) for layer in model.model.layers]
            self.cache_positions = torch.arange(max_context, device=p.device)
            self.pool = torch.cuda.graph_pool_handle() if self.capture else None
        if attention == "auto":
            attention = "triton" if self.device.type == "cuda" else "reference"
        if attention not in IMPLEMENTATIONS:
            raise ValueError(f"attention={attention!r}: use auto, triton or reference")
        self.decode_attention = IMPLEMENTATIONS[attention]
        self.compiled = graphs and (self.capture if compile is None else compile)
        # Compiled, the step's ends (embedding and rotary; final norm and LM head) are a few fused kernels too.
        self.layer, self.embed, self.head = (compile_layer(f, compile_options) if self.compiled else f
                                             for f in (self._layer, self._embed, self._head))

    def reset(self) -> None:
        self.length = 0  # stale entries are never attended: the mask stops at `length`

    def set_capture_layer(self, layer: int | tuple[int, ...] | None) -> None:
        """Return the residual stream entering `layer` as Scores.layer_hidden from every forward; several
        layers (EAGLE-3's low, middle and high features): their inputs side by side, [n, len(layers) * D]."""
        layers = (layer,) if isinstance(layer, int) else tuple(layer or ())
        last = len(self.model.model.layers) - 1
        if any(not 0 <= i <= last for i in layers):
            raise ValueError(f"capture_layer={layer}: the model has layers 0 to {last}")
        self.capture_layer = layer
        self.captured = layers
        self.steps.clear()  # graphs captured before do not write the new output

    @torch.inference_mode()
    def forward(self, tokens: Tensor, parents: Tensor | None = None) -> Scores:
        if self.graphs and len(tokens) <= GRAPH_TOKENS and (parents is None or self.static_trees):
            return self._static_forward(tokens, parents)
        n, start = len(tokens), self.length
        self.check_room(n)
        if parents is None:
            positions = torch.arange(start, start + n)
            block = torch.ones(n, n, dtype=torch.bool).tril()
        else:
            positions = start - 1 + tree_depths(parents.cpu())
            block = tree_mask(parents.cpu())
        # Host tensors made here: their copies need not wait for the device (a plain copy drains its queue).
        mask = torch.cat([torch.ones(n, start, dtype=torch.bool), block], dim=1).to(self.device, non_blocking=True)
        host_positions, positions = positions, positions.to(self.device, non_blocking=True)
        key_positions = torch.cat([torch.arange(start, device=self.device), positions])
        masks = window_masks(mask, positions, key_positions, self.windows)
        slots = torch.arange(start, start + n, device=self.device)
        lm = self.model.model
        x = lm.embed_tokens(tokens.to(self.device, non_blocking=True))[None]
        if start == 0:
            self.prompt_length = n
        if self.per_token_rope:
            cos, sin = per_token_rotary(lm.rotary_emb, x, host_positions, self.prompt_length, self.rope_limit[1])
        else:
            cos, sin = lm.rotary_emb(x, positions[None])
        captured = []
        for i, layer in enumerate(lm.layers):
            if i in self.captured:
                captured.append(x[0])
            x = x + self._attention(i, layer.self_attn, layer.input_layernorm(x), cos, sin, slots, masks[i])
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        hidden = lm.norm(x)[0]
        self.length = start + n
        layer_hidden = torch.cat(captured, -1) if captured else None
        return Scores(self.model.lm_head(hidden).float(), hidden, layer_hidden)

    def _attention(
        self, i: int, attn, x: Tensor, cos: Tensor, sin: Tensor, slots: Tensor, mask: Tensor
    ) -> Tensor:
        n = x.shape[1]
        q = attn.q_proj(x).view(1, n, self.n_heads, self.head_dim)
        k = attn.k_proj(x).view(1, n, self.n_kv_heads, self.head_dim)
        v = attn.v_proj(x).view(1, n, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if hasattr(attn, "q_norm"):  # Qwen3 normalises each head before the rotation
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        self.k_cache[i].index_copy_(1, slots, k[0])
        self.v_cache[i].index_copy_(1, slots, v[0])
        end = mask.shape[1]
        keys, values = self.k_cache[i][None, :, :end], self.v_cache[i][None, :, :end]
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
        return attn.o_proj(out.transpose(1, 2).reshape(1, n, -1))

    # ---------------------------------------------------------------- the static-shape decoding step
    def _static_forward(self, tokens: Tensor, parents: Tensor | None) -> Scores:
        n, start = len(tokens), self.length
        self.check_room(n)
        step = self._step(n, tree=parents is not None)
        step.tokens.copy_(tokens, non_blocking=True)
        torch.add(self.cache_positions[:n], start, out=step.slots)  # a kernel, not a copy from the host
        if parents is not None:
            parents = parents.cpu()
            paths = tree_paths(parents)
            step.positions.copy_(start - 1 + (paths >= 0).sum(1), non_blocking=True)  # each node's depth
            step.paths.copy_(paths, non_blocking=True)
        if step.graph is not None:
            step.graph.replay()
        elif self.capture:
            self._capture(step)
        else:
            step.logits, step.hidden, step.layer_hidden = self._decode(step)
        self.length = start + n
        # Copies: the graph's outputs are overwritten by its next replay, callers may keep theirs longer.
        captured = None if step.layer_hidden is None else step.layer_hidden.clone()
        return Scores(step.logits.clone(), step.hidden.clone(), captured)

    def _step(self, n: int, tree: bool) -> Step:
        """The fixed buffers (and graph) of n-token chains, whose slots are their positions (one tensor), or of
        n-node trees: kept apart (-n), their graphs differ."""
        key = -n if tree else n
        if key not in self.steps:
            tokens, positions = self.cache_positions[:n].clone(), self.cache_positions[:n].clone()
            slots = self.cache_positions[:n].clone() if tree else positions
            paths = torch.zeros(n, n, dtype=torch.int32, device=self.device) if tree else None
            self.steps[key] = Step(tokens, positions, slots, paths)
        return self.steps[key]

    def _capture(self, step: Step) -> None:
        """Run the step twice on a side stream (compiling it), capture it, replay it: this call's result."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._decode(step)
        torch.cuda.current_stream().wait_stream(side)
        step.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(step.graph, pool=self.pool):
            step.logits, step.hidden, step.layer_hidden = self._decode(step)
        step.graph.replay()

    def _decode(self, step: Step) -> tuple[Tensor, Tensor, Tensor | None]:
        """Logits, hidden states and captured layer input of the block, every shape fixed by its length."""
        tokens, positions, slots, paths = step.tokens, step.positions, step.slots, step.paths
        dynamic = self.compiled and len(tokens) > 1  # one compiled version for every n > 1 (n = 1 gets its own)
        if dynamic:
            for t, dims in ((tokens, (0,)), (positions, (0,)), (slots, (0,)), (paths, (0, 1))):
                for dim in dims if t is not None else ():
                    torch._dynamo.maybe_mark_dynamic(t, dim)
        x, delta, cos, sin = self.embed(tokens, positions)
        masks = self._window_masks(positions)  # trees take the static step only without windows: None then
        if dynamic:
            masked = ((m, 0) for m in set(masks) if m is not None)
            for t, dim in ((x, 1), (delta, 1), (cos, 1), (sin, 1), *masked):
                torch._dynamo.maybe_mark_dynamic(t, dim)
        captured = []
        for i, parts in enumerate(zip(self.model.model.layers, self.fused, self.k_cache, self.v_cache, strict=True)):
            if i in self.captured:
                captured.append((x + delta)[0])
            x, delta = self.layer(*parts, x, delta, cos, sin, masks[i], slots, paths)
        logits, hidden = self.head(x, delta)
        return logits, hidden, torch.cat(captured, -1) if captured else None

    def _embed(self, tokens: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The block's embeddings, a zero delta (the residual stream is x + delta: each layer returns its MLP's
        output as the next one's delta, which that layer adds inside its first norm's kernel, so no layer
        needs an add kernel of its own) and the rotary cos, sin of its positions."""
        lm = self.model.model
        x = lm.embed_tokens(tokens)[None]
        cos, sin = lm.rotary_emb(x, positions[None])
        return x, torch.zeros_like(x), cos, sin

    def _head(self, x: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.model.model.norm(x + delta)[0]
        return self.model.lm_head(hidden).float(), hidden

    def _layer(
        self, layer: nn.Module, fused: tuple, k_cache: Tensor, v_cache: Tensor, x: Tensor, delta: Tensor,
        cos: Tensor, sin: Tensor, mask: Tensor | None, slots: Tensor, paths: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """One decoder layer on the residual stream x + delta; returns the stream after attention and the MLP's
        output (the next layer's delta). A pure function of its inputs, so compiling it once serves every layer.
        The block's keys and values go to `slots`. Token i sees the cache slots up to slots[i] (the slots after
        the block hold stale entries or nothing); with `paths` (a tree), those before the block and its
        ancestors'; with `mask` (a sliding window), the slots it marks."""
        attn, mlp = layer.self_attn, layer.mlp
        qkv, qkv_bias, gate_up, gate_up_bias = fused
        n = x.shape[1]
        x = x + delta
        q_size, kv_size = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        q, k, v = F.linear(layer.input_layernorm(x), qkv, qkv_bias).split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(1, n, self.n_heads, self.head_dim)
        k = k.view(1, n, self.n_kv_heads, self.head_dim)
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
        k_cache.index_copy_(1, slots, k[0].transpose(0, 1))
        v_cache.index_copy_(1, slots, v.view(n, self.n_kv_heads, self.head_dim).transpose(0, 1))
        if mask is None:
            out = self.decode_attention(q[0], k_cache, v_cache, slots, paths)
        else:
            out = grouped_attention(q[0], k_cache, v_cache, mask)
        x = x + attn.o_proj(out.view(1, n, -1))
        gate, up = F.linear(layer.post_attention_layernorm(x), gate_up, gate_up_bias).chunk(2, dim=-1)
        return x, mlp.down_proj(mlp.act_fn(gate) * up)

    def _window_masks(self, positions: Tensor) -> list[Tensor | None]:
        """Per layer, None where the decode-attention kernel serves (it reads the used length off `positions`);
        for a model with sliding windows, every layer's mask over the whole cache, as Hugging Face masks it."""
        if all(w is None for w in self.windows):
            return [None] * len(self.windows)
        mask = self.cache_positions[None, :] <= positions[:, None]
        return window_masks(mask, positions, self.cache_positions, self.windows)

    # ---------------------------------------------------------------- cache
    def crop(self, length: int) -> None:
        self.length = min(length, self.length)

    def keep_path(self, start: int, nodes: Tensor) -> None:
        src = start + nodes.to(self.device)
        dst = torch.arange(start, start + len(nodes), device=self.device)
        for cache in self.k_cache + self.v_cache:
            cache[:, dst] = cache[:, src]
        self.length = start + len(nodes)


def compile_layer(fn, options: dict | None = None):
    """`fn` (the layer, or one of the step's ends) compiled with static shapes. Every NativeLlama of a process
    shares these methods' code objects, so with Dynamo's automatic dynamic shapes a second model (another
    width, head count or cache length) would get them recompiled with symbolic sizes, and slower kernels: on
    the CPU (TORCH_LOGS=recompiles) a model loaded after models of other shapes, as the harness's after the
    bench's, recompiled its layer with the cache length, widths and head counts dynamic. Static, each model
    adds its own two versions (n = 1, and n > 1 marked dynamic), which Dynamo's default limit of 8 would cut
    off into eager after four models."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, LAYER_COMPILES)
    return torch.compile(fn, dynamic=False, options=options)


def per_token_rotary(rotary: nn.Module, x: Tensor, positions: Tensor, prompt_length: int, limit: int):
    """cos, sin [1, n, D] of a length-dependent RoPE (dynamic, longrope) as `generate` rotates each token: with
    the frequencies of the sequence it was decoded in, the prompt for prompt tokens, its own position + 1 after
    (`limit`: the length up to which the original frequencies hold). `positions` on the host: reading them
    needs no sync with the device."""
    lengths = (positions.clamp_min(prompt_length - 1) + 1).tolist()
    by_length = {s: rope_frequencies(rotary, s, limit, x.device) for s in set(lengths)}
    freqs = positions.to(x.device)[:, None].float() * torch.stack([by_length[s] for s in lengths])
    emb = torch.cat((freqs, freqs), dim=-1)[None]
    return (emb.cos() * rotary.attention_scaling).to(x.dtype), (emb.sin() * rotary.attention_scaling).to(x.dtype)


def rope_frequencies(rotary: nn.Module, length: int, limit: int, device: torch.device) -> Tensor:
    """The inverse frequencies Hugging Face's rotary module uses in a forward whose longest sequence is `length`
    (its dynamic_rope_update: a tensor length, the long factors past the limit for longrope)."""
    if length <= limit:
        return rotary.original_inv_freq.to(device=device, dtype=torch.float)
    seq_len = limit + 1 if rotary.rope_type == "longrope" else torch.tensor(length, device=device)
    inv_freq, _ = ROPE_INIT_FUNCTIONS[rotary.rope_type](rotary.config, device, seq_len=seq_len)
    return inv_freq.to(device=device, dtype=torch.float)


def layer_windows(config) -> list[int | None]:
    """Each layer's sliding window (None: full attention), as the Hugging Face modules mask them: Mistral's
    `sliding_window` on every layer, Qwen2/Qwen3's on the layers their `layer_types` mark sliding."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if window is None or types is None or config.model_type == "mistral":
        return [window] * config.num_hidden_layers
    return [window if kind == "sliding_attention" else None for kind in types]


def window_masks(mask: Tensor, positions: Tensor, key_positions: Tensor, windows: list[int | None]) -> list[Tensor]:
    """Per layer, `mask` [n, S] (queries at `positions`, keys at `key_positions`) narrowed to the layer's
    window: a query sees the keys less than `window` positions behind it (Hugging Face's sliding_window_overlay).
    Layers with the same window share one tensor."""
    by_window = {w: mask if w is None else mask & (positions[:, None] - key_positions[None, :] < w) for w in windows}
    return [by_window[w] for w in windows]


def fuse_layer(layer: nn.Module) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    attn, mlp = layer.self_attn, layer.mlp
    return (*fuse_linears(attn.q_proj, attn.k_proj, attn.v_proj), *fuse_linears(mlp.gate_proj, mlp.up_proj))


def fuse_linears(*linears: nn.Linear) -> tuple[Tensor, Tensor | None]:
    """One weight (and bias) for Linears that read the same input. The Linears' parameters become views of
    it, so the Hugging Face module still holds the only copy of the weights and keeps working."""
    weight = torch.cat([m.weight.data for m in linears])
    has_bias = [m.bias is not None for m in linears]
    if any(has_bias) and not all(has_bias):
        raise ValueError(f"cannot fuse {[type(m).__name__ for m in linears]}: some have a bias, some not")
    bias = torch.cat([m.bias.data for m in linears]) if all(has_bias) else None
    start = 0
    for m in linears:
        rows = m.weight.shape[0]
        m.weight.data = weight[start : start + rows]
        if bias is not None:
            m.bias.data = bias[start : start + rows]
        start += rows
    return weight, bias
