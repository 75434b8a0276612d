"""Judge the answers: does a judge model prefer the tuned answer to the base answer?

Every answered valid-split prompt is judged twice, the tuned answer first and then the base answer
first (MT-Bench's pairwise protocol). A verdict counts only when both orders agree; otherwise it is
inconsistent and counts as a tie. An unparseable reply is counted and reported, never guessed, and
its pair is left out of the win rate. The win rate counts ties and order-dependent verdicts as half;
its interval is Tango's score interval of (wins - losses) / pairs, mapped to the rate, and a pass also
needs the exact sign test of wins against losses. The length-controlled win rate follows AlpacaEval 2: a
logistic regression of the same scores (every scored pair) on the squashed, standardized length
difference of the two answers, read at zero difference, fitted on this run's pairs (nothing downloaded).

The judge is a local model (through the same backend, chat template, greedy, batched; it may be the
base itself with the adapter switched off) or an OpenAI-compatible chat-completions endpoint. Replies
are cached by judge identity (weights digest, or URL and served model), the rendered prompt (template,
question, both answers and their order) and the reply budget, so a warm run asks the judge nothing.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Mapping, Protocol, Sequence

import numpy as np
from tqdm.auto import tqdm

from .backend import Backend, Generation, GenerationSettings, HFBackend
from .cache import Cache, memoized
from .chat import Message, accepts_system
from .data import PreferencePair
from .decide import tango_interval
from .endpoint import ChatEndpoint, EndpointSettings, Reply, RequestRefused, is_url
from .errors import ConfigError
from .identity import ModelIdentity, base_fingerprint, judge_key
from .models import CheckpointSpec, LocalBases, load_base, load_chat_tokenizer

if TYPE_CHECKING:
    from .config import EvalConfig

Verdict = Literal["A", "B", "tie"]
Outcome = Literal["win", "loss", "tie", "inconsistent", "unparseable"]
"""A pair's outcome for the tuned model: the consistent verdict of both orders, or why there is none."""

DEFAULT_TEMPLATE = """\
Please act as an impartial judge and evaluate the responses of two AI assistants to the user question \
below. Choose the assistant that answers the user's question better, considering accuracy, helpfulness \
and tone. Do not let the order in which the responses appear, their length, or the names of the \
assistants influence your decision.

[User Question]
{question}

[The Start of Assistant A's Answer]
{answer_a}
[The End of Assistant A's Answer]

[The Start of Assistant B's Answer]
{answer_b}
[The End of Assistant B's Answer]

Reply with your verdict first, strictly in this format: "[[A]]" if assistant A is better, "[[B]]" if \
assistant B is better, "[[C]]" for a tie. Then give at most one sentence of reason."""
"""MT-Bench's pairwise prompt (FastChat judge_prompts.jsonl, pair-v2), asking for the verdict first so
that a short reply budget suffices; replace it with --judge-template."""
PLACEHOLDERS = ("question", "answer_a", "answer_b")
_PLACEHOLDER = re.compile(r"\{(question|answer_a|answer_b)\}")

MIN_SIDE_SHARE = 0.1
MIN_SIDE = 5
"""The length-controlled rate needs at least MIN_SIDE_SHARE of the scored pairs, and at least MIN_SIDE of them,
where the tuned answer is longer, and as many where it is not: when nearly every difference has one sign,
the fit extrapolates to zero difference and length and adapter cannot be told apart."""
RIDGE = 1e-2
"""L2 penalty of the length regression: keeps the fit finite when verdicts follow length exactly."""


def check_template(text: str, source: str) -> str:
    """The template, refused (ConfigError) unless every placeholder appears in it."""
    missing = [p for p in PLACEHOLDERS if "{" + p + "}" not in text]
    if missing:
        raise ConfigError("--judge-template", source, "a text file with the placeholders {question}, {answer_a} "
                          "and {answer_b}", f"Missing: {', '.join('{' + m + '}' for m in missing)}.")
    return text


def load_template(path: Path | None) -> tuple[str, str]:
    """(name for the report, text) of --judge-template, or of the default."""
    if path is None:
        return ("default (MT-Bench pairwise, verdict first)", DEFAULT_TEMPLATE)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("--judge-template", str(path), "a readable UTF-8 text file", f"({e})") from None
    return (str(path), check_template(text, str(path)))


def render(template: str, question: str, answer_a: str, answer_b: str) -> str:
    """The template with its placeholders filled in one pass (braces inside the answers stay as written)."""
    values = {"question": question, "answer_a": answer_a, "answer_b": answer_b}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def question_text(messages: Sequence[Message]) -> str:
    """The prompt as the judge reads it: the user turn alone, or every turn labelled when there are several."""
    if len(messages) == 1:
        return messages[0][1]
    return "\n\n".join(f"{role.capitalize()}: {content}" for role, content in messages)


_LETTER = r"(A|B|C|(?i:tie))"
_WHO = r"(?:(?i:a\s+)?(?i:assistant|response|answer)\s+)?"
_PATTERNS = (
    re.compile(r"\[\[\s*" + _LETTER + r"\s*\]\]"),
    re.compile(r"(?i:\b(?:final\s+)?(?:verdict|winner|choice))\s*(?i:is)?\s*[:=]?\s*(?i:a\s+(?=tie))?" + _WHO
               + r"[*\"'(\[]*" + _LETTER + r"\b"),
    re.compile(r"(?i:\b(?:assistant|response|answer))\s+(A|B)\s+(?i:is\s+(?:the\s+)?better)\b"),
    re.compile(r"\[\s*" + _LETTER + r"\s*\]"),
)
_BARE = re.compile(r"^[\s*\"'(\[]*(?:(?i:assistant|response|answer)\s+)?" + _LETTER + r"[\s*\"')\].!]*$")


def parse_verdict(reply: str) -> Verdict | None:
    """'A', 'B' or 'tie' from a judge's reply, or None when it names none or several (never guessed).

    In order: MT-Bench's bracketed [[A]]/[[B]]/[[C]]; a labelled verdict ('Verdict: B', 'Winner: Assistant B',
    'The winner is Assistant A', 'Verdict: A tie.'); 'Assistant A is better'; single brackets ('[B]'); a
    reply that is only the verdict ('B', '**A**', 'Tie.'), or whose first line is (the verdict, then the
    reasoning, as the default template asks). The first form found decides; if it names two different
    verdicts (an echo of the instructions), the reply is unparseable. 'tie' in any case is a tie."""
    for pattern in _PATTERNS:
        found = {_verdict(v) for v in pattern.findall(reply)}
        if len(found) == 1:
            return found.pop()
        if found:
            return None
    m = _BARE.match(reply) or _BARE.match(next((line for line in reply.splitlines() if line.strip()), ""))
    return _verdict(m.group(1)) if m else None


def _verdict(token: str) -> Verdict:
    return "tie" if token.upper() in ("C", "TIE") else token.upper()  # type: ignore[return-value]


class JudgeSource(Protocol):
    """Where the judge comes from (the judge family's settings)."""

    source: str | None
    model: str | None
    key_env: str
    timeout: float
    concurrency: int


class Judge(Protocol):
    """Something that answers judge prompts: a local model or a served one."""

    name: str

    def identity(self) -> dict[str, Any]: ...

    def replies(self, prompts: Sequence[str], max_tokens: int) -> Iterator[tuple[int, Reply]]: ...

    def conversations(self, conversations: Sequence[Sequence[Message]], max_tokens: int
                      ) -> Iterator[tuple[int, Reply]]: ...


class LocalJudge:
    """A causal LM through the gate's backend, greedy, its chat template around each judge prompt. `load`
    gives the backend on first use (the gate's own model, adapter off, or one loaded for judging);
    `release` frees a model loaded for judging."""

    def __init__(self, name: str, identity: Mapping[str, Any], load: Callable[[], Backend],
                 settings: GenerationSettings, release: Callable[[], None] = lambda: None) -> None:
        self.name, self._identity, self._load, self._release = name, dict(identity), load, release
        self.settings = dataclasses.replace(settings, do_sample=False)

    def identity(self) -> dict[str, Any]:
        return {"local": self._identity, "settings": dataclasses.asdict(self.settings)}

    def replies(self, prompts: Sequence[str], max_tokens: int) -> Iterator[tuple[int, Reply]]:
        return self.conversations([(("user", p),) for p in prompts], max_tokens)

    def conversations(self, conversations: Sequence[Sequence[Message]], max_tokens: int
                      ) -> Iterator[tuple[int, Reply]]:
        """Each conversation through the model's chat template (a moderation model's template turns one ending
        in an assistant turn into its moderation prompt)."""
        settings = dataclasses.replace(self.settings, max_new_tokens=max_tokens)
        try:
            for i, g in self._load().generate_stream(conversations, adapter=False, settings=settings):
                yield i, Reply(g.text, None, "length" if g.truncated else "stop")
        finally:
            self._release()


class EndpointJudge:
    """A model behind an OpenAI-compatible chat-completions API (vLLM, llama.cpp, TGI, a hosted one)."""

    def __init__(self, endpoint: ChatEndpoint) -> None:
        self.endpoint = endpoint
        self.name = f"{endpoint.settings.model} at {endpoint.url}"

    def identity(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint.identity()}

    def replies(self, prompts: Sequence[str], max_tokens: int) -> Iterator[tuple[int, Reply]]:
        return self.conversations([(("user", p),) for p in prompts], max_tokens)

    def conversations(self, conversations: Sequence[Sequence[Message]], max_tokens: int
                      ) -> Iterator[tuple[int, Reply]]:
        """Each reply as it arrives; a request the server refuses (too long for its context, say) becomes an
        empty reply that says why, so its item is counted as unparseable instead of stopping the run."""
        def one(messages: Sequence[Message]) -> Reply:
            try:
                return self.endpoint.generate(messages, max_tokens=max_tokens)
            except RequestRefused as e:
                return Reply("", None, None, str(e))

        return self.endpoint.many(one, conversations)


def make_judge(js: JudgeSource, cfg: EvalConfig, spec: CheckpointSpec, gate_backend: Callable[[], Backend],
               gate: ModelIdentity, cache: Cache, local_bases: LocalBases | None, free: Callable[[], None]) -> Judge:
    """The --judge as a Judge, checked before any model loads: a server must serve --judge-model; 'base' or the
    gated adapter's base is the gate's own model with the adapter off; any other local model is loaded only
    when a reply is missing from the cache, after the gate's model is freed (one model in memory at a time)."""
    source = js.source
    if source is None:
        raise ConfigError("--judge", None, "a judge model or server URL", "The judge claims need one.")
    if is_url(source):
        assert js.model is not None  # the judge settings refuse a URL without it
        endpoint = ChatEndpoint(EndpointSettings(source, js.model, js.key_env, js.timeout, concurrency=js.concurrency))
        endpoint.check("--judge-model")
        return EndpointJudge(endpoint)
    dtype, device, settings = cfg.resolved_dtype, cfg.resolved_device, cfg.generation
    if source in ("base", spec.base, spec.base_declared):
        return LocalJudge(f"the base model {spec.base_declared or spec.base} (adapter off)",
                          gate.without_adapter().fields(), gate_backend, settings)
    path = str(local_bases[source]()) if local_bases and source in local_bases else source
    tokenizer = load_chat_tokenizer(path)
    identity = ModelIdentity.of(base_fingerprint(path, cache), None, cfg.quant, dtype, device, tokenizer.chat_template)
    held: dict[str, Backend] = {}

    def load() -> Backend:
        if "backend" not in held:
            free()
            held["backend"] = HFBackend(load_base(path, cfg.quant, dtype, device), tokenizer,
                                        system_ok=accepts_system(tokenizer), device=device)
        return held["backend"]

    def release() -> None:
        held.clear()
        free()

    return LocalJudge(source, identity.fields(), load, settings, release)


def ask(judge: Judge, prompts: Sequence[str], max_tokens: int, cache: Cache) -> tuple[list[dict[str, Any]], int]:
    """The judge's reply to each prompt ({reply, finish_reason, refused}), each cached as it arrives (an
    interrupted run keeps them); returns (replies, how many were asked now)."""
    identity = judge.identity()
    keys = [judge_key(identity, p, max_tokens) for p in prompts]

    def compute(missing: list[int]) -> Iterator[tuple[int, Any]]:
        with tqdm(total=len(missing), desc="judge", unit="verdict", leave=False) as bar:
            for j, reply in judge.replies([prompts[i] for i in missing], max_tokens):
                yield missing[j], {"reply": reply.text, "finish_reason": reply.finish_reason,
                                   "refused": reply.refused}
                bar.update(1)

    values, n = memoized(cache, "judge", keys, compute)
    return [{"reply": str(v["reply"]), "finish_reason": v.get("finish_reason"), "refused": v.get("refused")}
            for v in values], n


@dataclass(frozen=True, slots=True)
class JudgeExample:
    """One judged pair as the report shows it."""

    pair_id: str
    question: str
    tuned: str
    base: str
    outcome: Outcome
    reply_tuned_first: str
    reply_base_first: str


@dataclass(frozen=True, slots=True)
class LengthControl:
    """The win rate at zero length difference (AlpacaEval 2's length control)."""

    value: float | None
    """None when the consistent verdicts cannot separate length from adapter (see `note`)."""
    ci: tuple[float, float] | None
    slope: float | None
    """Log-odds of a tuned win per unit of squashed length difference."""
    n: int
    note: str


@dataclass(frozen=True, slots=True)
class JudgeSummary:
    """The judge's verdicts on the valid split, both orders, and what they add up to."""

    judge: str
    template: str
    n: int
    """Valid pairs with both answers, each judged in both orders."""
    wins: int
    losses: int
    ties: int
    """Consistent ties (both orders said tie)."""
    inconsistent: int
    unparseable: int
    """Pairs with at least one unparseable reply (left out of the win rate)."""
    verdicts: dict[str, int]
    """Over all replies: how often the judge said A (the first position), B, tie, or nothing parseable."""
    win_rate: float
    """(wins + ties/2 + inconsistent/2) / scored pairs."""
    win_ci: tuple[float, float]
    """0.5 + Tango's interval of (wins - losses) / scored, halved (ci_level)."""
    length_control: LengthControl
    mean_chars: dict[str, float]
    pair_ids: tuple[str, ...]
    outcomes: tuple[Outcome, ...]
    examples: tuple[JudgeExample, ...]
    sign_p: float = 1.0
    """One-sided exact sign test of wins against losses: a pass needs it below (1 - ci_level) / 2 as well."""
    unparseable_shown_first: dict[str, int] = dataclasses.field(default_factory=dict)
    """Unparseable replies by which answer was shown first ('tuned', 'base'): a judge that fails on one order
    only is reading positions."""
    refused: int = 0
    """Requests the server refused (HTTP 400, 413, 422: a prompt past its context, often); counted as unparseable."""
    refused_example: str = ""
    cut_unparseable: int = 0
    """Unparseable replies that stopped at the reply budget: the verdict may have come later."""

    def hints(self) -> str:
        """What to do about unparseable replies, where the replies say."""
        out = ""
        if self.cut_unparseable:
            out += (f"; {self.cut_unparseable} unparseable replies stopped at the reply budget: raise "
                    f"--judge-max-tokens")
        if self.refused:
            out += f"; {self.refused} requests refused by the server, e.g. {self.refused_example[:200]}"
        return out

    @property
    def scored(self) -> int:
        return self.n - self.unparseable

    @property
    def consistency(self) -> float:
        """Share of judged pairs whose two orders agree (an unparseable reply counts as disagreement)."""
        return (self.wins + self.losses + self.ties) / self.n if self.n else math.nan

    @property
    def first_position(self) -> float:
        """Share of parseable replies that chose the answer shown first."""
        parsed = self.verdicts["A"] + self.verdicts["B"] + self.verdicts["tie"]
        return self.verdicts["A"] / parsed if parsed else math.nan


def outcome(tuned_first: Verdict | None, base_first: Verdict | None) -> Outcome:
    """The pair's outcome for the tuned model from the verdicts of both orders."""
    if tuned_first is None or base_first is None:
        return "unparseable"
    first = {"A": "win", "B": "loss", "tie": "tie"}[tuned_first]
    second = {"A": "loss", "B": "win", "tie": "tie"}[base_first]
    return first if first == second else "inconsistent"  # type: ignore[return-value]


SCORE = {"win": 1.0, "loss": 0.0, "tie": 0.5, "inconsistent": 0.5}


def _newton(y: np.ndarray, x: np.ndarray, weights: np.ndarray, ridge: float, steps: int = 60) -> np.ndarray:
    """Penalized logistic regression of fractional outcomes y on [1, x], one fit per row of weights
    (observation counts; a bootstrap resample each): returns [rows, 2] coefficients."""
    b = np.zeros((weights.shape[0], 2))
    for _ in range(steps):
        eta = b[:, :1] + b[:, 1:] * x
        p = 1.0 / (1.0 + np.exp(-eta))
        r, w = weights * (p - y), weights * p * (1 - p)
        g = np.stack([r.sum(1), (r * x).sum(1)], 1) + ridge * b
        h00, h01, h11 = w.sum(1) + ridge, (w * x).sum(1), (w * x * x).sum(1) + ridge
        det = h00 * h11 - h01 * h01
        step = np.stack([h11 * g[:, 0] - h01 * g[:, 1], h00 * g[:, 1] - h01 * g[:, 0]], 1) / det[:, None]
        b -= np.clip(step, -5.0, 5.0)
        if np.abs(step).max() < 1e-10:
            break
    return b


def length_controlled(y: np.ndarray, d: np.ndarray, level: float, n_boot: int,
                      rng: np.random.Generator) -> LengthControl:
    """The tuned win rate at zero length difference: a logistic regression of every scored pair's score
    (1 win, 0.5 tie or order-dependent, 0 loss, as the raw rate counts them) on tanh(d / sd(d)), d the tuned
    minus base answer length in characters, read at d = 0, with a bootstrap interval over the pairs.
    Degenerate input: fewer than MIN_SIDE_SHARE of the pairs (or MIN_SIDE) with d > 0 or with d <= 0
    gives value None and the reason."""
    y, d = np.asarray(y, dtype=float), np.asarray(d, dtype=float)
    longer, other = int((d > 0).sum()), int((d <= 0).sum())
    need = max(MIN_SIDE, math.ceil(MIN_SIDE_SHARE * y.size))
    if longer < need or other < need:
        return LengthControl(None, None, None, y.size,
                             f"the tuned answer is longer in {longer} and not longer in {other} of {y.size} scored "
                             f"pairs; at least {need} of each ({MIN_SIDE_SHARE:.0%} of the pairs, and at least "
                             f"{MIN_SIDE}) are needed to tell length from the adapter")
    sd = float(d.std())
    x = np.tanh(d / sd) if sd > 0 else np.zeros_like(d)
    fit = _newton(y, x, np.ones((1, y.size)), RIDGE)[0]
    counts = rng.multinomial(y.size, np.full(y.size, 1.0 / y.size), size=n_boot).astype(float)
    boot = 1.0 / (1.0 + np.exp(-_newton(y, x, counts, RIDGE)[:, 0]))
    lo, hi = np.quantile(boot, [(1 - level) / 2, 1 - (1 - level) / 2])
    return LengthControl(float(1.0 / (1.0 + math.exp(-fit[0]))), (float(lo), float(hi)), float(fit[1]), y.size, "")


def win_interval(wins: int, losses: int, n: int, level: float) -> tuple[float, float]:
    """Interval of the win rate (wins + ties / 2) / n: 0.5 + Tango's paired interval of (wins - losses) / n,
    halved. It accounts for the ties (a rate made of ties is 0.5 with an interval, never [0.5, 0.5] by
    accident of a bootstrap) and stays wide at small n."""
    lo, hi = tango_interval(wins, losses, n, level)
    return (0.5 + lo / 2, 0.5 + hi / 2)


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided exact sign test of more wins than losses (ties left out); 1.0 with neither."""
    from scipy.stats import binomtest

    return 1.0 if wins + losses == 0 else float(binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue)


def summarize(judge: str, template: str, pairs: Sequence[PreferencePair], tuned: Sequence[str], base: Sequence[str],
              replies_tuned_first: Sequence[str], replies_base_first: Sequence[str], ci_level: float, n_boot: int,
              rng: np.random.Generator, n_examples: int = 3) -> JudgeSummary:
    """Outcomes per pair, the win rate with its score interval and sign test, and the length-controlled rate on
    the same scored pairs; as examples, the first pair of each outcome that occurred."""
    v1 = [parse_verdict(r) for r in replies_tuned_first]
    v2 = [parse_verdict(r) for r in replies_base_first]
    outcomes = tuple(outcome(a, b) for a, b in zip(v1, v2))
    counts = {o: outcomes.count(o) for o in ("win", "loss", "tie", "inconsistent", "unparseable")}
    verdicts = {k: sum(v == k for v in v1 + v2) for k in ("A", "B", "tie")} | {"unparseable": v1.count(None) + v2.count(None)}
    scored = [i for i, o in enumerate(outcomes) if o in SCORE]
    scores = np.array([SCORE[outcomes[i]] for i in scored])
    lo, hi = win_interval(counts["win"], counts["loss"], len(scored), ci_level) if scored else (math.nan, math.nan)
    lengths = np.array([len(t) - len(b) for t, b in zip(tuned, base)], dtype=float)
    lc = length_controlled(scores, lengths[scored], ci_level, n_boot, rng)
    picks = [outcomes.index(o) for o in ("win", "loss", "tie", "inconsistent", "unparseable") if o in outcomes]
    examples = tuple(JudgeExample(pairs[i].pair_id, question_text(pairs[i].messages)[:600], tuned[i][:600],
                                  base[i][:600], outcomes[i], replies_tuned_first[i][:300],
                                  replies_base_first[i][:300]) for i in picks[:n_examples])
    return JudgeSummary(judge, template, len(outcomes), counts["win"], counts["loss"], counts["tie"],
                        counts["inconsistent"], counts["unparseable"], verdicts,
                        float(scores.mean()) if scores.size else math.nan, (lo, hi), lc,
                        {"tuned": float(np.mean([len(t) for t in tuned])) if tuned else math.nan,
                         "base": float(np.mean([len(b) for b in base])) if base else math.nan},
                        tuple(p.pair_id for p in pairs), outcomes, examples,
                        sign_test_p(counts["win"], counts["loss"]),
                        {"tuned": v1.count(None), "base": v2.count(None)})


def measure(judge: Judge, pairs: Sequence[PreferencePair], answers: Mapping[str, Sequence[Generation | None]],
            template: tuple[str, str], max_tokens: int, cache: Cache, ci_level: float, n_boot: int,
            rng: np.random.Generator) -> tuple[JudgeSummary, int]:
    """Judge every valid pair with both answers in both orders (cached) and summarize; `template` is (its
    name for the report, its text). Returns (summary, replies asked now)."""
    idx = [i for i, p in enumerate(pairs) if p.split == "valid" and answers["tuned"][i] and answers["base"][i]]
    judged = [pairs[i] for i in idx]
    tuned = [g.text for i in idx if (g := answers["tuned"][i])]
    base = [g.text for i in idx if (g := answers["base"][i])]
    questions = [question_text(p.messages) for p in judged]
    prompts = ([render(template[1], q, t, b) for q, t, b in zip(questions, tuned, base)]
               + [render(template[1], q, b, t) for q, t, b in zip(questions, tuned, base)])
    replies, n = ask(judge, prompts, max_tokens, cache)
    texts = [r["reply"] for r in replies]
    refused = [r["refused"] for r in replies if r["refused"]]
    cut = sum(r["finish_reason"] == "length" and parse_verdict(r["reply"]) is None for r in replies)
    summary = summarize(judge.name, template[0], judged, tuned, base, texts[:len(idx)], texts[len(idx):], ci_level,
                        n_boot, rng)
    return dataclasses.replace(summary, refused=len(refused), refused_example=refused[0] if refused else "",
                               cut_unparseable=cut), n
