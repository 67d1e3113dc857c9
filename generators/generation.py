"""Llama-style generation from any checkpoint: batched prompts, KV cache, sampling, streaming.

    generator = Generator.build("checkpoints/baseline-quickstart/best.pt", max_batch_size=4)
    out = generator.text_completion(["Once upon a time", "Tom and Lily"], temperature=0.0, max_gen_len=40)
    print(out[0]["generation"])

Decoding follows Meta's reference: prompts are left-aligned in one (B, total_len) buffer; the
prefill runs the shortest prompt's length, then one position per step for every row, where rows
whose prompt is longer keep their prompt token instead of the sampled one. Each step feeds only
the new position (the cache holds the prefix); `use_cache=False` re-runs the whole prefix instead.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dataset_definitions.tokenization import Tokenizer
from generators.sampling import check_sampling, next_token
from modelskv.load import load_model

EOS_CHECK_EVERY = 8  # decode steps between reads of "every row has ended" (each read waits for the GPU)


@dataclass
class Generator:
    model: torch.nn.Module        # a modelskv model (KV cache attached)
    tokenizer: Tokenizer
    device: torch.device

    @staticmethod
    def build(ckpt: str, max_seq_len: int | None = None, max_batch_size: int = 8, device: str = "auto",
              dtype: str = "auto", compile: bool = False, quantize: str | None = None) -> "Generator":
        """Load a training checkpoint into its inference model (modelskv.load.load_model).

        Args:
            ckpt: path of a checkpoint written by the trainer.
            max_seq_len: longest prompt + generation (default and maximum: the model's context).
            max_batch_size: most prompts (or beams) decoded together; sizes the KV cache.
            device: "auto", "cpu", "cuda", ...
            dtype: "auto" (bf16 on GPUs, fp32 on CPU), "fp32", "bf16" or "fp16".
            compile: torch.compile the one-token decode step (CUDA graphs on GPUs).
            quantize: None, or "int8" for weight-only int8 linear layers (modelskv/quantize.py).
        Returns:
            A Generator.
        """
        loaded = load_model(ckpt, max_batch_size, max_seq_len, device, dtype, quantize)
        generator = Generator(loaded.model, loaded.tokenizer, loaded.device)
        if compile:
            generator.compile_decode()
        return generator

    def compile_decode(self) -> None:
        """Compile the one-token step with a tensor position: one graph for every step, CUDA-graph friendly."""
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        self._decode = torch.compile(self.model, mode=mode, fullgraph=True)
        self._position = torch.zeros((), dtype=torch.long, device=self.device)  # the step's start_pos, on the device

    # -- token level
    def prompt_tokens(self, text: str) -> list[int]:
        """Encode a prompt the way training documents begin: [bos] + ids (GPT-2: <|endoftext|> + ids)."""
        return [self.tokenizer.start_id] + self.tokenizer.encode(text)

    @torch.inference_mode()
    def generate(self, prompt_tokens: list[list[int]], max_gen_len: int, temperature: float = 0.6,
                 top_p: float = 0.9, top_k: int | None = None, logprobs: bool = False, echo: bool = False,
                 seed: int | None = None, use_cache: bool = True,
                 stop_at_eos: bool = True) -> tuple[list[list[int]], list[list[float]] | None]:
        """Continue each prompt until EOS or max_gen_len new tokens (or the cache is full).

        Args:
            prompt_tokens: one list of token ids per prompt (lengths may differ).
            max_gen_len: most new tokens per prompt.
            temperature: 0 = greedy; otherwise logits / temperature, then top-k and top-p filtering.
            top_p, top_k: nucleus mass and candidate count for sampling.
            logprobs: also return the log-probability of every returned token under the model,
                log_softmax of its logits (before temperature, top-k and top-p); 0 for the first
                prompt token, which has no prediction.
            echo: return the prompt tokens too (their log-probs under the model, if logprobs).
            seed: seeds the sampler for reproducible output.
            use_cache: False re-runs the whole prefix every step (slow; the no-cache baseline).
            stop_at_eos: False decodes max_gen_len tokens whatever comes (speed benchmarks).
        Returns:
            (tokens, logprobs): per prompt the generated ids (without the EOS), and their log-probs or None.
        """
        if max_gen_len < 1:
            raise ValueError(f"max_gen_len must be >= 1, got {max_gen_len}")
        check_sampling(temperature, top_p, top_k)  # top_k against the vocabulary: in filter_top_k
        for tokens, token_logprobs, _ in self._decode_steps(prompt_tokens, max_gen_len, temperature, top_p, top_k,
                                                             seed, use_cache, logprobs, stop_at_eos):
            pass  # run to the end; the buffers hold the result
        out_tokens, out_logprobs = [], []
        for i, prompt in enumerate(prompt_tokens):
            start = 0 if echo else len(prompt)
            row = tokens[i, start:len(prompt) + max_gen_len].tolist()
            row_lp = token_logprobs[i, start:len(prompt) + max_gen_len].tolist() if logprobs else None
            if stop_at_eos and self.tokenizer.eos_id in row[len(prompt) - start:]:
                cut = row.index(self.tokenizer.eos_id, len(prompt) - start)
                row, row_lp = row[:cut], row_lp[:cut] if logprobs else None
            out_tokens.append(row)
            out_logprobs.append(row_lp)
        return out_tokens, out_logprobs if logprobs else None

    def _decode_steps(self, prompt_tokens, max_gen_len, temperature, top_p, top_k, seed, use_cache, logprobs,
                      stop_at_eos=True):
        """Yield (tokens (B, L), logprobs (B, L) or None, done (B,)) after every decoding step."""
        model, bsz = self.model, len(prompt_tokens)
        if not 1 <= bsz <= model.max_batch:
            raise ValueError(f"{bsz} prompts for a generator built with max_batch_size={model.max_batch}")
        lengths = [len(p) for p in prompt_tokens]
        if min(lengths) == 0:
            raise ValueError("empty prompt: every prompt needs at least one token (prompt_tokens adds BOS)")
        if max(lengths) >= model.max_seq_len:
            raise ValueError(f"prompt of {max(lengths)} tokens leaves no room in max_seq_len={model.max_seq_len}")
        total_len = min(model.max_seq_len, max(lengths) + max_gen_len)
        pad = self.tokenizer.pad_id
        tokens = torch.full((bsz, total_len), pad, dtype=torch.long, device=self.device)
        for i, p in enumerate(prompt_tokens):
            tokens[i, :len(p)] = torch.tensor(p[:total_len], dtype=torch.long)
        in_prompt = torch.arange(total_len, device=self.device)[None] < torch.tensor(lengths, device=self.device)[:, None]
        token_logprobs = torch.zeros((bsz, total_len), device=self.device) if logprobs else None
        generator = torch.Generator(self.device).manual_seed(seed) if seed is not None else None
        done = torch.zeros(bsz, dtype=torch.bool, device=self.device)
        prev_pos = 0
        first = min(lengths)
        for cur_pos in range(first, total_len):
            if use_cache:
                logits = self.forward(tokens[:, prev_pos:cur_pos], prev_pos)       # (B, cur-prev, V)
                scored = prev_pos
            else:
                logits = model.forward_full(tokens[:, :cur_pos])                    # (B, cur, V)
                scored = 0
            if logprobs and cur_pos - scored > 1:  # log p(token t | prefix) of the prompt tokens scored now
                token_logprobs[:, scored + 1:cur_pos] = -F.cross_entropy(
                    logits[:, :-1].float().transpose(1, 2), tokens[:, scored + 1:cur_pos], reduction="none")
            nxt = next_token(logits[:, -1], temperature, top_p, top_k, generator)
            nxt = torch.where(in_prompt[:, cur_pos], tokens[:, cur_pos], nxt)        # prompts win
            tokens[:, cur_pos] = nxt
            if logprobs:
                token_logprobs[:, cur_pos] = F.log_softmax(logits[:, -1].float(), dim=-1).gather(1, nxt[:, None])[:, 0]
            done |= ~in_prompt[:, cur_pos] & (nxt == self.tokenizer.eos_id)
            prev_pos = cur_pos
            yield tokens, token_logprobs, done
            # reading `done` waits for the GPU, so it is read every few steps: rows that ended keep
            # decoding until then, and their tokens after the EOS are cut off by the caller
            if stop_at_eos and (cur_pos - first) % EOS_CHECK_EVERY == EOS_CHECK_EVERY - 1 and done.all():
                break

    def forward(self, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
        """Logits (B, T, V) of tokens at start_pos.. after the cached prefix; the compiled step for T = 1."""
        decode = getattr(self, "_decode", None)
        if decode is not None and tokens.size(1) == 1:
            self._position.fill_(start_pos)  # a kernel argument: no host-to-device copy, no wait
            return decode(tokens, self._position)
        return self.model(tokens, start_pos)

    def fit_prompt(self, tokens: list[int], max_gen_len: int, truncate: bool = False) -> list[int]:
        """A prompt's ids if they leave room for a new token in the context; else, with `truncate`,
        its last max(1, context - max_gen_len) ids, or a ValueError saying the length and the limit."""
        limit = self.model.max_seq_len
        if len(tokens) < limit:
            return tokens
        if not truncate:
            raise ValueError(f"the prompt has {len(tokens)} tokens; the model's context is {limit} (at most "
                             f"{limit - 1} prompt tokens): shorten it, or pass --truncate to keep its end")
        return tokens[-max(1, limit - max_gen_len):]

    # -- text level
    def text_completion(self, prompts: list[str], temperature: float = 0.6, top_p: float = 0.9,
                        top_k: int | None = None, max_gen_len: int | None = None, logprobs: bool = False,
                        echo: bool = False, seed: int | None = None, use_cache: bool = True,
                        truncate: bool = False) -> list[dict]:
        """Complete each text prompt.

        Args:
            prompts: the texts to continue (batched; lengths may differ).
            temperature, top_p, top_k, logprobs, echo, seed, use_cache: as in `generate`.
            max_gen_len: most new tokens (default: fill the cache).
            truncate: a prompt too long for the context keeps its end (else ValueError).
        Returns:
            One dict per prompt: "generation" (text), "tokens" (ids) and, with logprobs, "logprobs".
        """
        max_gen_len = self.model.max_seq_len - 1 if max_gen_len is None else max_gen_len
        encoded = [self.fit_prompt(self.prompt_tokens(p), max_gen_len, truncate) for p in prompts]
        tokens, lps = self.generate(encoded, max_gen_len, temperature, top_p, top_k, logprobs, echo, seed, use_cache)
        out = []
        for i, row in enumerate(tokens):
            item = {"generation": self.tokenizer.decode(row), "tokens": row}
            if logprobs:
                item["logprobs"] = lps[i]
            out.append(item)
        return out

    def stream(self, prompt: str, temperature: float = 0.6, top_p: float = 0.9, top_k: int | None = None,
               max_gen_len: int | None = None, seed: int | None = None, truncate: bool = False) -> Iterator[str]:
        """Yield the completion of one prompt piece by piece as it is decoded."""
        max_gen_len = self.model.max_seq_len - 1 if max_gen_len is None else max_gen_len
        if max_gen_len < 1:
            raise ValueError(f"max_gen_len must be >= 1, got {max_gen_len}")
        check_sampling(temperature, top_p, top_k)  # top_k against the vocabulary: in filter_top_k
        encoded = [self.fit_prompt(self.prompt_tokens(prompt), max_gen_len, truncate)]
        start = len(encoded[0])
        shown = text = ""
        for tokens, _, done in self._decode_steps(encoded, max_gen_len, temperature, top_p, top_k, seed,
                                                  use_cache=True, logprobs=False):
            row = tokens[0, start:].tolist()
            end = row.index(self.tokenizer.eos_id) if self.tokenizer.eos_id in row else len(row)
            text = self.tokenizer.decode(row[:end])  # decode the whole tail: BPE pieces join across tokens
            # a trailing U+FFFD may be a character whose other bytes come with the next tokens: held back,
            # since once shown it could not be replaced (the rest of the text would never start with it)
            ready = text.rstrip("\ufffd")
            if ready.startswith(shown) and len(ready) > len(shown):
                yield ready[len(shown):]
                shown = ready
            if done[0]:
                break
        if text.startswith(shown) and len(text) > len(shown):
            yield text[len(shown):]  # what no later token completed
