"""`diffex taxonomy propose`: the OpenAI-compatible path against a small HTTP server on 127.0.0.1,
the transformers path with a tiny hand-wired LLaVA built offline, the answer cache, and the
repair or rejection of malformed answers."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from diffex.errors import DiffexError
from diffex.store.core import Store
from diffex.taxonomy.answer import parse_answer, taxonomy_from_answer
from diffex.taxonomy.propose import build_prompt, propose_taxonomy
from diffex.taxonomy.vlm_hf import HFVLM
from diffex.taxonomy.vlm_http import OpenAIVLM

ANSWERS = {
    "good": '{"facial hair": {"beard": ["goatee", "full beard"]}, "headwear": ["cap"]}',
    "fenced": 'Here is the taxonomy:\n```json\n{"facial hair": {"beard": ["goatee", "full beard",],},\n "headwear": ["cap"]}\n```\nLet me know!',
    "truncated": '{"facial hair": {"beard": ["goatee", "full beard"]}, "headwear": ["cap", "top h',
    "wrapped": '{"taxonomy": [{"name": "facial hair", "subtypes": [{"name": "beard", "subtypes": ["goatee", "full beard"]}]}, {"name": "headwear", "subtypes": ["cap", "Cap"]}]}',
    "garbage": "I'm sorry, I can't describe these images.",
}
GOOD_PATHS = ["facial hair", "facial hair > beard", "facial hair > beard > goatee", "facial hair > beard > full beard",
              "headwear", "headwear > cap"]


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # the timeout test's client hangs up on purpose; a traceback here is noise


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        model = body.get("model")
        if model == "slow":
            time.sleep(1.5)
        if model == "broken":
            payload, code = {"error": {"message": "model overloaded, try later"}}, 503
        else:
            payload, code = {"choices": [{"message": {"role": "assistant", "content": ANSWERS.get(model, "")}}]}, 200
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server(monkeypatch):
    httpd = _QuietServer(("127.0.0.1", 0), Handler)
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{httpd.server_address[1]}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def paths(tax):
    return [" > ".join(n.path) for n in tax.nodes]


def test_prompt_asks_for_fine_grained_editable_json():
    prompt = build_prompt(3, "cartoon faces")
    assert "cartoon faces" in prompt and "fine-grained sub-type" in prompt and "3 levels deep" in prompt
    assert "JSON only" in prompt and '{"category": {"sub-type": ["finer sub-type", ...]}}' in prompt
    with pytest.raises(DiffexError, match="^levels must be between 1 and 8"):
        build_prompt(9)


def test_request_shape_and_one_request_for_two_proposals(server, demo_images, tmp_path, cli_run):
    db, out = tmp_path / "v.duckdb", tmp_path / "proposed.json"
    first = propose_taxonomy(demo_images, "openai:good", samples=3, db=db, out=out, domain="cartoon faces")
    assert len(server.requests) == 1
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer test-key"
    assert req["body"]["model"] == "good"
    (message,) = req["body"]["messages"]
    parts = message["content"]
    assert message["role"] == "user" and parts[0]["type"] == "text" and "cartoon faces" in parts[0]["text"]
    images = [p["image_url"]["url"] for p in parts[1:]]
    assert len(images) == 3 and all(u.startswith("data:image/png;base64,") for u in images)
    assert base64.b64decode(images[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert first.status == "ok" and not first.cached and paths(first.taxonomy) == GOOD_PATHS
    assert json.loads(out.read_text())["categories"] == {"facial hair": {"beard": ["goatee", "full beard"]}, "headwear": ["cap"]}

    # again, through the CLI: answered from the store, the server sees nothing new
    result = cli_run("taxonomy", "propose", "--images", demo_images, "--vlm", "openai:good", "--samples", "3",
                     "--db", db, "--domain", "cartoon faces", "--json")
    assert result.exit_code == 0, result.output
    again = json.loads(result.output)
    assert again["cached"] is True and again["taxonomy_id"] == first.taxonomy.taxonomy_id and again["nodes"] == 6
    assert len(server.requests) == 1
    with Store.open(db, read_only=True) as store:
        row = store.vlm_response(first.response_id)
        assert row["status"] == "ok" and row["model"].startswith("openai:good@http://127.0.0.1:")
        assert row["raw_text"] == ANSWERS["good"] and len(row["image_ids"]) == 3
        version = store.resolve_taxonomy()
        assert version["taxonomy_id"] == first.taxonomy.taxonomy_id and version["note"].startswith("proposed by openai:good")
    # other images (or other levels) are another question
    propose_taxonomy(demo_images, "openai:good", samples=2, db=db)
    assert len(server.requests) == 2


@pytest.mark.parametrize("model,repairs", [
    ("fenced", ["removed a code fence", "ignored text around the JSON", "fixed trailing commas or set-style objects"]),
    ("truncated", ["closed JSON that was cut off (the unfinished last entry is dropped)"]),
    ("wrapped", ["unwrapped the 'taxonomy' key", "merged duplicate 'headwear > cap'"]),
])
def test_malformed_answers_are_repaired(server, demo_images, tmp_path, model, repairs):
    db = tmp_path / "r.duckdb"
    result = propose_taxonomy(demo_images, f"openai:{model}", samples=1, db=db)
    assert result.status == "repaired" and result.repairs == repairs
    assert paths(result.taxonomy) == GOOD_PATHS
    with Store.open(db, read_only=True) as store:
        assert store.vlm_response(result.response_id)["status"] == "repaired"


def test_garbage_is_rejected_with_the_raw_text_saved(server, demo_images, tmp_path, cli_run):
    db = tmp_path / "g.duckdb"
    result = cli_run("taxonomy", "propose", "--images", demo_images, "--vlm", "openai:garbage", "--samples", "2", "--db", db)
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "not a usable taxonomy (the answer holds no JSON object); raw text saved to" in result.output
    saved = tmp_path / result.output.strip().split("raw text saved to ")[1]
    assert saved.read_text() == ANSWERS["garbage"]
    with Store.open(db, read_only=True) as store:
        assert [r["status"] for r in store._rows("SELECT status FROM vlm_responses")] == ["rejected"]
        assert store.taxonomy_versions() == []


@pytest.mark.parametrize("spec_or_vlm,needle", [
    ("openai:broken", "answered HTTP 503: model overloaded, try later"),
    ("slow", "did not answer within 0.3 s"),
    ("nowhere", "cannot reach VLM endpoint http://127.0.0.1:9/v1/chat/completions"),
    ("gpt:4", "unknown VLM spec 'gpt:4'"),
])
def test_endpoint_failures_are_one_line(server, demo_images, tmp_path, spec_or_vlm, needle):
    vlm = {"slow": lambda: OpenAIVLM("slow", timeout=0.3),
           "nowhere": lambda: OpenAIVLM("good", base_url="http://127.0.0.1:9/v1", timeout=2)}.get(spec_or_vlm, lambda: spec_or_vlm)()
    with pytest.raises(DiffexError) as info:
        propose_taxonomy(demo_images, vlm, samples=1, db=tmp_path / "e.duckdb")
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_missing_key_for_the_public_endpoint(monkeypatch, demo_images):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(DiffexError, match="set OPENAI_API_KEY"):
        propose_taxonomy(demo_images, "openai:gpt-4o-mini", samples=1)


def test_parse_answer_edge_cases():
    assert parse_answer('{"a": ["b"]}').status == "ok"
    assert parse_answer('{"hat": {"beanie", "cap"}}').data == {"hat": {"beanie": None, "cap": None}}
    assert parse_answer('{"categories": {"a": []}, "domain": "x"}').data == {"categories": {"a": []}, "domain": "x"}
    tax, parsed = taxonomy_from_answer('{"a": {"b": null, "c": 1')
    assert paths(tax) == ["a", "a > b"] and parsed.status == "repaired"
    for text, needle in [("no json here", "no JSON"), ('{"a": ', "cut off before"), ('{"a": ]', "mismatched"),
                         ("[]", "empty list"), ('"text"', "no JSON object"), ('{"domain": "x"}', "no categories")]:
        with pytest.raises(DiffexError, match=needle):
            taxonomy_from_answer(text)


# ---------------------------------------------------------------- the transformers path
VOCAB = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "<start>", "{", '"headwear"', ":", "[", '"cap"', ",", '"beanie"', "]", "}"]
# the answer the wired model emits, one token after another
ANSWER = ["<start>", "{", '"headwear"', ":", "[", '"cap"', ",", '"beanie"', "]", "}", "</s>"]


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory):
    """A 1-layer LLaVA (CLIP vision + Llama text) built from configs offline, with a word-level
    tokenizer and a chat template. Its weights are wired so that each position predicts the next
    token of ANSWER from its own token alone (attention and MLP outputs zeroed, one-hot
    embeddings, lm_head = the successor table): greedy decoding then writes valid JSON."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    folder = tmp_path_factory.mktemp("tiny-vlm")
    ids = {w: i for i, w in enumerate(VOCAB)}
    word_level = Tokenizer(models.WordLevel(vocab=ids, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    template = ("{% for m in messages %}{{ m['role'] }} : {% for c in m['content'] %}"
                "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}"
                "{% if add_generation_prompt %}<start>{% endif %}")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})
    tokenizer.chat_template = template
    hidden = 16
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       image_size=32, patch_size=16, projection_dim=8),
        text_config=LlamaConfig(vocab_size=len(VOCAB), hidden_size=hidden, intermediate_size=16, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                                bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False),
        image_token_index=ids["<image>"], vision_feature_layer=-1, image_seq_length=4, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")) and "language_model" in name:
                param.zero_()
        embed = model.get_input_embeddings().weight
        embed.zero_()
        embed[:, : len(VOCAB)] = torch.eye(len(VOCAB))
        head = model.get_output_embeddings().weight
        head.zero_()
        for a, b in zip(ANSWER, ANSWER[1:]):
            head[ids[b], ids[a]] = 10.0
    model.generation_config.eos_token_id = ids["</s>"]
    model.generation_config.pad_token_id = ids["<pad>"]
    processor = LlavaProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                               tokenizer=tokenizer, patch_size=16, vision_feature_select_strategy="default",
                               chat_template=template, num_additional_image_tokens=1)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_hf_model_proposes_and_is_cached(tiny_vlm, demo_images, tmp_path, monkeypatch):
    db = tmp_path / "hf.duckdb"
    first = propose_taxonomy(demo_images, f"hf:{tiny_vlm}", samples=2, levels=2, db=db)
    assert first.status == "ok" and not first.cached
    assert paths(first.taxonomy) == ["headwear", "headwear > cap", "headwear > beanie"]
    with Store.open(db, read_only=True) as store:
        row = store.vlm_response(first.response_id)
    assert row["raw_text"].replace(" ", "") == '{"headwear":["cap","beanie"]}'
    assert row["model"].startswith(f"hf:{tiny_vlm}@") and row["status"] == "ok"
    # the second time nothing is loaded or generated
    monkeypatch.setattr(HFVLM, "_load", lambda self: pytest.fail("the cached answer should be used"))
    again = propose_taxonomy(demo_images, f"hf:{tiny_vlm}", samples=2, levels=2, db=db)
    assert again.cached and again.taxonomy.taxonomy_id == first.taxonomy.taxonomy_id


def test_hf_model_that_cannot_load(tmp_path, demo_images, monkeypatch, cli_run):
    (tmp_path / "empty-model").mkdir()
    result = cli_run("taxonomy", "propose", "--images", demo_images, "--vlm", f"hf:{tmp_path / 'empty-model'}", "--samples", "1")
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output.startswith(f"Error: cannot load VLM hf:{tmp_path / 'empty-model'}:")
    # nor does it leave a new database behind
    db = tmp_path / "t.duckdb"
    result = cli_run("taxonomy", "propose", "--images", demo_images, "--vlm", f"hf:{tmp_path / 'empty-model'}",
                     "--samples", "1", "--db", db)
    assert result.exit_code == 1 and result.output.startswith("Error: cannot load VLM"), result.output
    assert not db.exists()


def test_propose_usage_errors(cli_run, demo_images, tmp_path):
    result = cli_run("taxonomy", "propose", "--images", demo_images, "--vlm", "openai:x", "--levels", "0")
    assert result.exit_code == 2 and "--levels" in result.output
    result = cli_run("taxonomy", "propose", "--images", tmp_path / "none", "--vlm", "openai:x")
    assert result.exit_code == 1 and "image not found" in result.output
