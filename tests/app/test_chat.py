"""`mlxspec chat`: the session (prompt building, cache reuse, context overflow, reset), the REPL
driven by scripted input (slash commands, Ctrl-C mid-reply, Ctrl-D), and the typer command."""
import io
import json
import shutil

import mlx.core as mx
import pytest
from mlx_lm import stream_generate as mlx_lm_stream_generate
from mlx_lm.sample_utils import make_sampler
from rich.console import Console
from typer.testing import CliRunner

import mlx_spec
from mlx_spec.app import CANCELLED, Worker
from mlx_spec.chat import ChatSession
from mlx_spec.cli.app import app
from mlx_spec.cli.chat_cmd import ChatRepl
from mlx_spec.target import Target
from support.random_models import make_model_folder

TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant: {% endif %}")
# like reasoning models' templates: earlier replies are not rendered verbatim
REWRITING_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: "
                      "{% if m['role'] == 'assistant' %}[reply]{% else %}{{ m['content'] }}{% endif %}"
                      "</s>\n{% endfor %}{% if add_generation_prompt %}<s>assistant: {% endif %}")
MESSAGES = ["once upon a time", "the ball rolled away", "lily ran after it"]


def with_template(folder, source, template):
    shutil.copytree(source, folder)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["chat_template"] = template
    config_file.write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def dirs(random_model_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("chat_models")
    plain = random_model_dirs["llama"]
    return {"plain": plain,
            "template": with_template(root / "template", plain, TEMPLATE),
            "rewriting": with_template(root / "rewriting", plain, REWRITING_TEMPLATE),
            "short": make_model_folder(root / "short", "llama", seed=3, max_position_embeddings=64)}


@pytest.fixture(scope="module")
def models(dirs):
    return {name: mlx_spec.load(str(path)) for name, path in dirs.items()}


@pytest.fixture
def prefilled(monkeypatch):
    """Tokens sent to Target.prefill, call by call."""
    counts = []
    prefill = Target.prefill

    def counting(self, tokens, *args, **kwargs):
        counts.append(len(tokens))
        return prefill(self, tokens, *args, **kwargs)
    monkeypatch.setattr(Target, "prefill", counting)
    return counts


def reply(session, text):
    return "".join(chunk.text for chunk in session.send(text))


def mlx_lm_greedy_ids(model, prompt_ids, max_tokens):
    ids = []
    for response in mlx_lm_stream_generate(model.model, model.tokenizer, prompt_ids,
                                           max_tokens=max_tokens, sampler=make_sampler(0.0)):
        if response.finish_reason == "stop" and response.token in model.tokenizer.eos_token_ids:
            break
        ids.append(response.token)
    return ids


# -- the session -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["plain", "template"])
@pytest.mark.parametrize("method", ["ar", "pld"])
def test_turns_extend_the_cache_and_prefill_only_new_tokens(models, prefilled, kind, method):
    model = models[kind]
    session = ChatSession(model, method=method, max_tokens=12)
    assert session.uses_template == (kind == "template")
    before = []
    for i, text in enumerate(MESSAGES):
        prefilled.clear()
        reply(session, text)
        turn = session.turns[-1]
        prompt = session._tokens[:turn.prompt_tokens]
        assert prompt[:len(before)] == before  # this turn's tokens extend the last turn's
        assert sum(prefilled) == turn.prefilled_tokens
        if i == 0:
            assert turn.prefilled_tokens == len(prompt) - 1
        else:  # the new text, plus the last reply token (a bonus token is not yet cached)
            assert turn.prefilled_tokens <= len(prompt) - len(before) + 1
            assert turn.prefilled_tokens < len(prompt) // 2
        # lossless across cache reuse: the reply is mlx-lm's greedy continuation of the prompt
        assert session._tokens[len(prompt):] == mlx_lm_greedy_ids(model, prompt, 12)[:turn.generated_tokens]
        before = list(session._tokens)
    assert [m["role"] for m in session.messages] == ["user", "assistant"] * 3


def test_prompt_follows_the_chat_template(models):
    model = models["template"]
    session = ChatSession(model, max_tokens=8, system="be brief")
    first = reply(session, "hello")
    reply(session, "and then")
    rendered = model.tokenizer.apply_chat_template(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"},
         {"role": "assistant", "content": first}, {"role": "user", "content": "and then"}],
        tokenize=False, add_generation_prompt=True)
    prompt = session._tokens[:session.turns[-1].prompt_tokens]
    assert model.tokenizer.decode(prompt) == rendered


def test_plain_continuation_continues_the_text(models):
    model = models["plain"]
    session = ChatSession(model, max_tokens=8)
    first = reply(session, "once upon a time")
    reply(session, "the end")
    prompt = session._tokens[:session.turns[-1].prompt_tokens]
    text = model.tokenizer.decode(prompt)
    assert text.endswith("once upon a time" + first + (" " if not first[-1:].isspace() else "") + "the end")


def test_template_that_rewrites_history_falls_back_to_encoding_afresh(models):
    model = models["rewriting"]
    session = ChatSession(model, max_tokens=8)
    for text in MESSAGES:
        reply(session, text)
    prompt = session._tokens[:session.turns[-1].prompt_tokens]
    assert "[reply]" in model.tokenizer.decode(prompt)
    assert prompt == mlx_spec.api.encode_prompt(model, session._render(session.messages[:-1]), raw=True)


def test_history_beyond_the_context_is_dropped_with_a_note(models):
    model = models["short"]  # 64 tokens of context
    notes = []
    session = ChatSession(model, max_tokens=8, on_note=notes.append)
    for i in range(12):
        reply(session, f"lily found ball {i}")
        assert session.turns[-1].prompt_tokens <= 64 - 8
    assert notes and all("dropped the" in note and "64 tokens" in note for note in notes)
    assert len(session.messages) < 24 and session.messages[-2]["content"] == "lily found ball 11"
    transcript = session.transcript()  # the transcript keeps every turn
    assert len(transcript["messages"]) == 24 and transcript["in_context"] == len(session.messages)
    with pytest.raises(mlx_spec.MlxSpecError, match="context allows 56"):
        session.send("lily " * 80)
    assert reply(session, "still here") is not None  # the session goes on


def test_stopped_reply_is_kept_and_the_next_turn_extends_it(models, prefilled):
    session = ChatSession(models["plain"], method="ar", max_tokens=40)
    chunks = session.send("once upon a time")
    first = next(chunks)
    chunks.close()  # what a cancelled generation does
    turn = session.turns[-1]
    assert turn.finish_reason == CANCELLED and turn.generated_tokens < 40
    assert session.messages[-1] == {"role": "assistant", "content": first.text}
    decoder = session.decoder
    assert decoder.target.offset == len(decoder.cached_tokens)
    prefilled.clear()
    reply(session, "the ball")
    assert sum(prefilled) <= len(session.model.tokenizer.encode(" the ball", add_special_tokens=False)) + 1


def test_method_switch_keeps_the_cache_and_reset_releases_it(models, prefilled):
    session = ChatSession(models["plain"], method="pld", max_tokens=8)
    reply(session, "once upon a time")
    pld = session.decoder
    held = list(pld.cached_tokens)
    session.set_method("ar")
    ar = session.decoder
    assert ar is not pld and ar.target is pld.target and ar.cached_tokens == held
    assert pld.cached_tokens is ar.cached_tokens  # one cache, with the tokens it holds
    prefilled.clear()
    reply(session, "the ball")
    assert sum(prefilled) == session.turns[-1].prefilled_tokens < session.turns[-1].prompt_tokens // 2
    session.set_method("pld")
    assert session.decoder is pld and pld.cached_tokens is ar.cached_tokens
    session.reset()
    assert session.messages == [] and session.turns == [] and pld.target.offset == 0
    assert mx.get_cache_memory() == 0  # freed buffers went back to the system
    assert session.decoder is not pld  # decoders (and their drafters' state) are dropped too
    prefilled.clear()
    reply(session, "lily")
    assert session.turns[-1].prefilled_tokens == sum(prefilled) == session.turns[-1].prompt_tokens - 1


def test_bad_settings_are_user_errors(models):
    session = ChatSession(models["plain"], max_tokens=8)
    with pytest.raises(mlx_spec.MlxSpecError, match="unknown method"):
        session.set_method("nope")
    with pytest.raises(mlx_spec.MlxSpecError):
        session.set_temperature(-1)
    with pytest.raises(mlx_spec.MlxSpecError, match="bad options"):
        ChatSession(models["plain"], method="pld", method_options={"bogus": 1})
    with pytest.raises(mlx_spec.MlxSpecError, match="empty"):
        session.send("   ")
    assert session.method == "auto" and session.temperature == 0.0


# -- the REPL, scripted --------------------------------------------------------------------------

class Script:
    """read_line for the REPL: returns the lines in turn, then raises EOFError (Ctrl-D). An
    exception instance in the list is raised instead (KeyboardInterrupt at the prompt)."""

    def __init__(self, lines):
        self.lines = list(lines)

    def __call__(self, prompt):
        if not self.lines:
            raise EOFError
        line = self.lines.pop(0)
        if isinstance(line, BaseException):
            raise line
        return line


class InterruptingFile(io.StringIO):
    """A terminal where the user presses Ctrl-C while the first reply chunk is printed."""

    def __init__(self):
        super().__init__()
        self.armed = False

    def write(self, text):
        if self.armed and text and not text.startswith(("\n", "\x1b")):
            self.armed = False
            raise KeyboardInterrupt
        return super().write(text)


def run_repl(model, lines, file=None, session=None, worker=None, **session_options):
    session = session or ChatSession(model, **session_options)
    file = file or io.StringIO()
    console = Console(file=file, width=200, force_terminal=False, color_system=None)
    with (worker or Worker(model)) as worker:
        code = ChatRepl(session, worker, console, Script(lines)).run()
    return code, file.getvalue(), session


def test_repl_commands(models, tmp_path):
    saved = tmp_path / "chat.json"
    code, out, session = run_repl(models["plain"], [
        "once upon a time", "/stats", "/method ar", "/temp 0.5", "/temp hot", "/method nope",
        "/frobnicate", "the ball", "/stats", f"/save {saved}", "/save /no/such/dir/chat.json", "/method", "/help", "/reset", "/stats", "/quit",
        "never read"], max_tokens=8, seed=1)
    assert code == 0
    assert "plain continuation" in out
    assert out.count("accepted per target call") == 2 and "method auto" in out and "method ar" in out
    assert "prefill" in out and "error: unknown method 'nope'" in out
    totals = [line.split() for line in out.splitlines() if line.strip().startswith("all ")]
    assert len(totals) == 1 and totals[0][3] == "16"  # two turns of 8 tokens
    assert "error: cannot write /no/such/dir/chat.json" in out and "usage: /method NAME" in out
    assert "error: unknown command /frobnicate" in out and "error: usage: /temp" in out
    assert "/method NAME" in out and "conversation cleared" in out
    assert session.temperature == 0.5 and session.method == "ar" and session.messages == []
    transcript = json.loads(saved.read_text())
    assert [m["role"] for m in transcript["messages"]] == ["user", "assistant"] * 2
    assert [t["method"] for t in transcript["turns"]] == ["auto", "ar"]
    assert transcript["turns"][1]["prefilled_tokens"] < transcript["turns"][1]["prompt_tokens"] // 2


class GatedWorker(Worker):
    """Holds the first reply after its first chunk until the REPL has cancelled it, so that
    Ctrl-C deterministically lands mid-reply."""
    gated = False

    def run(self, chunks, method=""):
        if self.gated:
            return super().run(chunks, method)
        self.gated = True

        def gated():
            for i, chunk in enumerate(chunks):
                if i == 1:
                    generation._cancel.wait(30)
                yield chunk
        generation = super().run(gated(), method)
        return generation


def test_ctrl_c_mid_reply_stops_it_and_keeps_the_session(models):
    file = InterruptingFile()

    class ArmingScript(Script):
        def __call__(self, prompt):
            line = super().__call__(prompt)
            file.armed = line == "tell me a story"
            return line

    model = models["plain"]
    session = ChatSession(model, method="ar", max_tokens=60)
    console = Console(file=file, width=200, color_system=None)
    with GatedWorker(model) as worker:
        code = ChatRepl(session, worker, console, ArmingScript(
            ["tell me a story", "and then", "/stats"])).run()
    out = file.getvalue()
    assert code == 0  # Ctrl-D after the script
    stopped, finished = session.turns
    assert stopped.finish_reason == CANCELLED and stopped.generated_tokens == 2
    assert "(stopped)" in out
    assert finished.finish_reason == "length" and finished.generated_tokens == 60
    # the kept partial reply is in the cache: the next turn prefilled only its new text
    assert finished.prefilled_tokens < 10
    assert "cancelled" in out


def test_ctrl_c_at_the_prompt_does_not_leave(models):
    code, out, session = run_repl(models["plain"], [KeyboardInterrupt(), "lily"], max_tokens=4)
    assert code == 0 and "Ctrl-D or /quit leaves" in out and len(session.turns) == 1


def test_over_long_message_is_an_error_line(models):
    code, out, session = run_repl(models["short"], ["lily " * 80, "lily"], max_tokens=8)
    assert code == 0 and "error: the message makes a prompt" in out and len(session.turns) == 1


# -- the command ---------------------------------------------------------------------------------

def invoke(*args, input_text=""):
    return CliRunner().invoke(app, ["chat", *args], input=input_text)


def test_chat_command_scripted(dirs):
    result = invoke("--model", str(dirs["template"]), "--max-tokens", "6", "--method", "ar",
                    "--seed", "3", "--temp", "0.8", input_text="hello\n/stats\n/quit\n")
    assert result.exit_code == 0, result.output
    assert "chat template" in result.output and "6 tokens" in result.output
    assert "method ar" in result.output


def test_chat_command_ctrl_d_exits_zero(dirs):
    result = invoke("--model", str(dirs["plain"]), "-n", "4", "--opt", "num_draft_tokens=3",
                    input_text="once upon a time\n")
    assert result.exit_code == 0, result.output
    assert "4 tokens" in result.output


@pytest.mark.parametrize("args, message", [
    (["--model", "/no/such/folder"], "model folder not found"),
    (["--method", "nope"], "unknown method"),
    (["--temp", "-1"], "temperature"),
    (["--max-tokens", "0"], "max-tokens"),
    (["--opt", "novalue"], "KEY=VALUE"),
    (["--opt", "bogus=1"], "bad options"),
])
def test_chat_command_errors(dirs, args, message):
    if "--model" not in args:
        args = ["--model", str(dirs["plain"]), *args]
    result = invoke(*args)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1
