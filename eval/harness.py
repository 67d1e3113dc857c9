"""Our checkpoints as an lm-evaluation-harness model, `small-lm` (run it with eval/lm_eval_harness.py).

    python -m eval.lm_eval_harness --model small-lm --model_args ckpt=PATH[,device=cpu,batch_size=8,max_length=128]
        --tasks NAMES [--include_path DIR] [--limit N] [--output_path DIR] ...

Importing this module registers the model; from Python, `import eval.harness` and then
`lm_eval.simple_evaluate(model="small-lm", model_args={"ckpt": PATH}, tasks=[...])`.
model_args: ckpt; device, dtype ("auto": bf16 on GPUs, fp32 on CPU); batch_size (requests per
forward pass or decoded together); max_length (tokens the model sees, default and maximum its
context); stride (of loglikelihood_rolling's windows, default max_length // 2). model_args win
over the command line's --batch_size and --device.

Requests are answered as `--model hf` answers them on our exported folder (`models.convert --to hf`):
- Text is encoded as our prompts are, [bos] + ids (GPT-2: <|endoftext|> + ids); lm_eval splits a
  (context, continuation) pair where the context's own tokens end, and an empty context is [bos].
- loglikelihood: context + continuation keep their last max_length + 1 tokens (left truncation);
  the continuation's summed log-probability, and whether greedy decoding would produce it.
- loglikelihood_rolling: [bos] + ids scored by the perplexity scorer's sliding windows
  (perplexity/scoring.py `score_rows`), so every token once with at least max_length - stride tokens
  of context; no EOS is appended (lm_eval scores the text). A text of at most max_length tokens gets
  what hf gets with add_bos_token=False (hf's default encoding scores an extra BOS); a longer one gets
  more context per token than lm_eval's disjoint windows give.
- generate_until: the Generator (KV cache), batched; greedy unless do_sample (then temperature,
  top_p, top_k); the prompt keeps its last max_length - max_gen_toks tokens; EOS ends a
  continuation, which is cut before the first `until` string.
"""

import json

import torch

from generators.generation import Generator
from modelskv.load import load_model
from perplexity.scoring import IGNORE, score_rows, target_nll, token_nll

LMEVAL_MISSING = 'lm-evaluation-harness is not installed: pip install -e ".[lmeval]"'
try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
    from lm_eval.utils import simple_parse_args_string
except ModuleNotFoundError as e:
    if not (e.name or "").startswith("lm_eval"):
        raise
    raise ImportError(LMEVAL_MISSING) from None

MODEL_NAME = "small-lm"
LMEVAL_DEFAULT_DEVICE = "cuda:0"  # what lm_eval's command line passes without --device
SAMPLING_KEYS = {"do_sample", "temperature", "top_p", "top_k"}  # what generate_until passes to the Generator


@register_model(MODEL_NAME)
class SmallLM(TemplateLM):
    """A checkpoint of this repo behind lm_eval's three request types."""

    def __init__(self, ckpt: str, device: str = "auto", dtype: str = "auto", batch_size: int | str = 1,
                 max_length: int | None = None, stride: int | None = None, max_batch_size: int | None = None):
        super().__init__()
        self.batch_size = _positive_int("batch_size", batch_size)
        loaded = load_model(ckpt, max_batch=self.batch_size, device=device, dtype=dtype)
        self.generator = Generator(loaded.model, loaded.tokenizer, loaded.device)
        self.model, self.tokenizer, self._device = loaded.model, loaded.tokenizer, loaded.device
        context = loaded.model.max_seq_len
        self.max_length = _positive_int("max_length", max_length or context)
        if self.max_length > context:
            raise ValueError(f"max_length={self.max_length} exceeds the model's context ({context}): "
                             f"give at most {context}")
        self.stride = _positive_int("stride", stride or max(1, self.max_length // 2))
        if self.stride > self.max_length:
            raise ValueError(f"stride={self.stride} exceeds max_length ({self.max_length}): it would skip tokens")

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "SmallLM":
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> "SmallLM":
        """model_args win over the command line's batch_size and device, which lm_eval always passes
        (batch_size 1 and device cuda:0 by default), so `--model_args ...,batch_size=8` is not a duplicate
        argument; lm_eval's default device on a machine without CUDA gives way to ours ("auto")."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        if extra.get("device") == LMEVAL_DEFAULT_DEVICE and not torch.cuda.is_available():
            del extra["device"]
        return cls(**{**extra, **arg_dict})

    # -- tokens
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tokenizer.start_id

    @property
    def max_gen_toks(self) -> int:
        return 256  # lm_eval's default, as hf's

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """[bos] + ids, as Generator.prompt_tokens; ids alone with add_special_tokens=False."""
        ids = self.tokenizer.encode(string)
        return ids if add_special_tokens is False else [self.tokenizer.start_id, *ids]

    # -- scoring
    @torch.inference_mode()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log p(continuation | context), greedy) of ((context, continuation), context ids, continuation ids)."""
        too_long = max((len(cont) for _, _, cont in requests), default=0)
        if too_long > self.max_length:
            raise ValueError(f"a continuation of {too_long} tokens does not fit max_length={self.max_length}")
        rows = [((ctx + cont)[-(self.max_length + 1):], len(cont)) for _, ctx, cont in requests]
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))  # similar lengths batched: little padding
        out: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            T = len(rows[batch[0]][0]) - 1
            x = torch.full((len(batch), T), self.tokenizer.pad_id, dtype=torch.long)
            y = torch.full((len(batch), T), IGNORE, dtype=torch.long)
            for b, i in enumerate(batch):
                row, n = rows[i]
                x[b, :len(row) - 1] = torch.tensor(row[:-1])
                y[b, len(row) - 1 - n:len(row) - 1] = torch.tensor(row[-n:])  # only the continuation is a target
            x, y = x.to(self.device), y.to(self.device)
            logits = self.model.forward_full(x)                                          # (B, T, V)
            logprob = (-target_nll(logits, y).double().sum(1)).tolist()
            greedy = ((logits.argmax(-1) == y) | (y == IGNORE)).all(1).tolist()
            for b, i in enumerate(batch):
                out[i] = (logprob[b], greedy[b])
        for (pair, _, _), answer in zip(requests, out):
            if pair is not None:
                self.cache_hook.add_partial("loglikelihood", pair, answer)
        return out

    @torch.inference_mode()
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """log p(text) of each request's text, [bos] + ids in the perplexity scorer's sliding windows."""
        texts = [req.args[0] for req in requests]
        rows = [self.tok_encode(t) for t in texts]
        nll, _ = score_rows(token_nll(self.model.forward_full), rows, self.max_length, self.stride,
                            self.batch_size, self.device, pad_id=self.tokenizer.pad_id)
        out = [-float(v) for v in nll]
        for text, value in zip(texts, out):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), value)
        return out

    # -- generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Each request's continuation of its context, batched among requests with the same gen_kwargs."""
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        out = [""] * len(requests)
        for members in groups.values():
            context_of = {i: requests[i].args[0] for i in members}
            for i, text in zip(members, self._generate([context_of[i] for i in members], requests[members[0]].args[1])):
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out

    def _generate(self, contexts: list[str], gen_kwargs: dict) -> list[str]:
        """Continuations of `contexts` under one request's gen_kwargs, `batch_size` prompts at a time."""
        kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=None)  # EOS ends decoding by itself
        max_gen_toks = int(kwargs.pop("max_gen_toks"))
        unknown = sorted(set(kwargs) - SAMPLING_KEYS)
        if unknown:
            raise ValueError(f"generation settings {unknown} are not supported by {MODEL_NAME}: "
                             f"it takes until, max_gen_toks, {', '.join(sorted(SAMPLING_KEYS))}")
        if not 1 <= max_gen_toks < self.max_length:
            raise ValueError(f"max_gen_toks={max_gen_toks} leaves no room for a prompt in max_length="
                             f"{self.max_length}: pass --gen_kwargs max_gen_toks=N with N < {self.max_length}")
        temperature = float(kwargs.get("temperature") or 0.0) if kwargs.get("do_sample") else 0.0
        top_p, top_k = float(kwargs.get("top_p") or 1.0), kwargs.get("top_k") and int(kwargs["top_k"])
        prompts = [self.tok_encode(c)[-(self.max_length - max_gen_toks):] for c in contexts]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        out = [""] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            tokens, _ = self.generator.generate([prompts[i] for i in batch], max_gen_toks, temperature, top_p,
                                                top_k)
            for i, row in zip(batch, tokens):
                out[i] = postprocess_generated_text(self.tokenizer.decode(row), until, None)
        return out


def _positive_int(name: str, value) -> int:
    """A model_args number (lm_eval passes them as int or str), or ValueError naming the argument."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or str(value).strip() != str(number):
        raise ValueError(f"{name}={value!r} must be a positive whole number")
    return number
