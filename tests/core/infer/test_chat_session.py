"""RunSession on a tiny run trained on made-up facts: the adapter is attached the way training built it, the prompt
is rendered with the training template, greedy answers hold the facts with the adapter on and not with it off
(one model), streaming gives the same text, and bad input gets a ChatError."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from llamaforge_tui.core.infer.decoding import IncrementalDecoder, StopStringFilter  # noqa: E402
from llamaforge_tui.core.infer.generation import ChatError, GenerationDefaults  # noqa: E402
from llamaforge_tui.core.infer.session import RunSession  # noqa: E402
from llamaforge_tui.core.settings import Settings  # noqa: E402
from tests.fixtures.chat_runs import FACTS, train_fact_run  # noqa: E402
from tests.fixtures.train_models import one_thread  # noqa: E402, F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fact_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_fact_run(tmp_path_factory.mktemp("facts"))


@pytest.fixture(scope="module")
def session(fact_run: Path) -> RunSession:
    return RunSession.open(fact_run, Settings(runs_dir=str(fact_run.parent)))


def _ask(q: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}]


def test_opens_by_run_id_with_training_template_and_stop_tokens(fact_run: Path, session: RunSession) -> None:
    by_id = RunSession.open("tiny-facts", Settings(runs_dir=str(fact_run.parent)))
    assert by_id.run_dir == fact_run.resolve()
    assert session.template.name == "chatml"
    assert session.tokenizer.convert_tokens_to_ids("<|im_end|>") in session.stop_ids
    assert session.render(_ask("hi")).endswith("<|im_start|>assistant\n")
    assert session.adapter_path == fact_run / "adapter"


def test_tuned_holds_the_facts_and_base_does_not(session: RunSession) -> None:
    for question, answer in FACTS:
        tuned = session.generate(_ask(question), max_tokens=32, temperature=0.0)
        with session.adapter_disabled():
            assert not session.adapter_on
            base = session.generate(_ask(question), max_tokens=32, temperature=0.0)
        assert session.adapter_on
        assert tuned.text.strip() == answer, (question, tuned.text)
        assert tuned.finish == "stop" and tuned.tokens > 3 and tuned.tokens_per_second > 0
        assert answer.split()[-1].rstrip(".") not in base.text


def test_streaming_pieces_add_up_and_greedy_matches_transformers(session: RunSession) -> None:
    pieces: list[str] = []
    msgs = _ask(FACTS[1][0])
    result = session.generate(msgs, max_tokens=32, on_token=pieces.append)
    assert len(pieces) > 3 and "".join(pieces) == result.text
    ids = session.encode(msgs)
    out = session.model.generate(input_ids=torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                                 eos_token_id=sorted(session.stop_ids))
    assert session.tokenizer.decode(out[0][len(ids):], skip_special_tokens=True) == result.text


def test_sampling_is_seeded_and_stop_event_cancels(session: RunSession) -> None:
    msgs = _ask("Say something.")
    a = session.generate(msgs, max_tokens=12, temperature=1.5, top_p=0.95, seed=7)
    b = session.generate(msgs, max_tokens=12, temperature=1.5, top_p=0.95, seed=7)
    assert a.text == b.text
    stop = threading.Event()
    seen: list[str] = []

    def on_token(piece: str) -> None:
        seen.append(piece)
        stop.set()

    with session.adapter_disabled():  # the random base never stops by itself
        cut = session.generate(msgs, max_tokens=200, on_token=on_token, stop_event=stop)
    assert cut.finish == "cancelled" and cut.tokens < 10


def test_examples_come_from_the_training_data_without_an_eval_split(session: RunSession) -> None:
    split, examples = session.examples()
    assert split == "train"
    assert [(e.prompt, e.reference) for e in examples] == FACTS


@pytest.mark.parametrize("bad, message", [
    ([], "empty"), ([{"role": "assistant", "content": "x"}], "end with a user"),
    ([{"role": "robot", "content": "x"}], "not a chat message"),
])
def test_bad_conversations_are_refused(session: RunSession, bad: list, message: str) -> None:
    with pytest.raises(ChatError, match=message):
        session.generate(bad)


def test_bad_sampling_and_overlong_prompts_are_refused(session: RunSession) -> None:
    with pytest.raises(ChatError, match="top-p"):
        session.generate(_ask("x"), top_p=0.0)
    with pytest.raises(ChatError, match="context"):
        session.generate(_ask("word " * 600))


def test_missing_run_and_missing_adapter(tmp_path: Path, fact_run: Path) -> None:
    from llamaforge_tui.core.errors import ConfigError

    with pytest.raises(ConfigError, match="no run"):
        RunSession.open(tmp_path / "nope", Settings(runs_dir=str(tmp_path)))
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.toml").write_text((fact_run / "config.toml").read_text())
    with pytest.raises(ChatError, match="no adapter yet"):
        RunSession.open(bare, Settings(runs_dir=str(tmp_path)))


def test_stop_strings_are_held_back_and_cut() -> None:
    out: list[str] = []
    f = StopStringFilter(("<|stop|>",), out.append)
    for piece in ["Hel", "lo <", "|st", "op|> never"]:
        f.feed(piece)
    assert f.done and f.finish() == "Hello " and "".join(out) == "Hello "
    shown: list[str] = []
    g = StopStringFilter(("END",), shown.append)
    g.feed("an E")
    assert shown == ["an "]  # "E" may start "END": held back until known
    assert g.finish() == "an E" and shown == ["an ", "E"]


def test_incremental_decoder_releases_whole_characters() -> None:
    from tests.fixtures.data_tokenizers import make_tokenizer

    tok = make_tokenizer("chatml")
    text = "Bonjour, é ünïcode 🙂 and spaces  here."
    dec = IncrementalDecoder(tok)
    pieces = [dec.push(i) for i in tok(text, add_special_tokens=False)["input_ids"]]
    pieces.append(dec.flush())
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


def test_defaults_from_ollama_parameters() -> None:
    d = GenerationDefaults.from_ollama({"temperature": 0.3, "top_p": 0.8, "stop": ["<end_of_turn>"], "seed": 5,
                                        "num_predict": 64}, "Be brief.")
    assert (d.temperature, d.top_p, d.stop, d.seed, d.max_tokens, d.system) == (0.3, 0.8, ("<end_of_turn>",), 5, 64,
                                                                                "Be brief.")
    assert GenerationDefaults.from_ollama({}).temperature == 0.0
