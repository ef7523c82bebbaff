"""Token-aware chunking with the model's own tokenizer: limits hold for any input, text is covered in order."""

from __future__ import annotations

import bisect
import itertools
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from service.app.ingest.chunking import SENTENCE_END, Chunk, Chunker, sentence_spans
from service.app.store.embedder import FastEmbedEmbedder

REPO_ROOT = Path(__file__).resolve().parents[2]

WORDS = [
    "the",
    "of",
    "retrieval",
    "vector",
    "embedding",
    "tokenizer",
    "paragraph",
    "sentence",
    "qdrant",
    "postgres",
    "kubernetes",
    "unbelievably",
    "internationalization",
    "café",
    "naïve",
    "東京",
    "数据库",
    "😀",
    "e-mail",
    "state-of-the-art",
    "(parenthesis)",
    '"quoted"',
    "3.14159",
    "1,000,000",
    "https://example.com/a/b?c=d&e=f",
    "C++",
    "x86_64",
    "ÅÄÖ",
]


def random_text(rng: random.Random) -> str:
    """Random prose with every shape the chunker must survive: short and endless sentences, blank lines,
    single line breaks, words longer than a whole chunk, unicode, stray whitespace."""
    parts: list[str] = []
    for _ in range(rng.randint(0, 40)):
        kind = rng.random()
        if kind < 0.55:
            words = [rng.choice(WORDS) for _ in range(rng.randint(1, 30))]
            parts.append(" ".join(words) + rng.choice([". ", "! ", "? ", ".\n", " "]))
        elif kind < 0.7:
            parts.append(rng.choice(["\n\n", "\n", "\n \n\t\n", "   "]))
        elif kind < 0.85:
            # A sentence far longer than any chunk, without punctuation.
            parts.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(100, 700))) + " ")
        elif kind < 0.95:
            # A "word" with no spaces, longer than the whole chunk budget in tokens.
            parts.append(
                "".join(rng.choice("abcdefghij-._/0123456789") for _ in range(rng.randint(50, 2500)))
            )
        else:
            parts.append(rng.choice(["😀" * rng.randint(1, 400), "東京" * rng.randint(1, 400)]))
    return "".join(parts)


def assert_valid_chunks(chunker: Chunker, text: str, chunks: list[Chunk]) -> None:
    for chunk in chunks:
        assert chunk.text == text[chunk.start : chunk.end]
        assert chunk.text.strip() == chunk.text
        assert chunk.text
        assert chunker.count_tokens(chunk.text) <= chunker.max_tokens
        assert chunk.tokens + chunker.special_tokens == chunker.count_tokens(chunk.text)
        assert len(chunk.text) <= chunker.max_chars
    starts = [c.start for c in chunks]
    ends = [c.end for c in chunks]
    assert starts == sorted(set(starts)), "chunks must start strictly in order"
    assert ends == sorted(ends), "chunks must end in order"
    # Coverage: every token of the whole text lies inside some chunk.
    encoding = chunker.tokenizer.encode(text, add_special_tokens=False)
    for token_start, token_end in encoding.offsets:
        if token_end - token_start > chunker.max_chars:
            # A token longer than a chunk may hold ([UNK] for a long run of letters): cut by characters, every
            # character of it in some chunk.
            covered = set()
            for chunk in chunks:
                covered.update(range(max(chunk.start, token_start), min(chunk.end, token_end)))
            assert covered == set(range(token_start, token_end)), (
                f"token at {token_start}:{token_end} not covered"
            )
        elif token_end > token_start:
            # Ends are sorted, so the last chunk starting at or before the token is the one to contain it.
            index = bisect.bisect_right(starts, token_start) - 1
            where = f"token at {token_start}:{token_end} ({text[token_start:token_end]!r})"
            assert index >= 0, f"{where} is before the first chunk"
            assert token_end <= chunks[index].end, f"{where} is in no chunk"


@pytest.mark.parametrize(
    ("max_tokens", "chunk_size", "chunk_overlap"),
    [(256, 200, 32), (256, 1000, 300), (256, 64, 0), (40, 32, 8), (24, 16, 15)],
)
def test_random_inputs_respect_the_limit_and_cover_the_text_in_order(
    embedder: FastEmbedEmbedder, max_tokens: int, chunk_size: int, chunk_overlap: int
) -> None:
    chunker = Chunker(
        embedder.tokenizer, max_tokens=max_tokens, chunk_size=chunk_size, chunk_overlap=chunk_overlap
    )
    assert chunker.budget <= max_tokens - chunker.special_tokens
    rng = random.Random(f"{max_tokens}-{chunk_size}-{chunk_overlap}")
    for _ in range(40):
        text = random_text(rng)
        assert_valid_chunks(chunker, text, chunker.split(text))


def test_the_model_max_length_caps_a_larger_chunk_size(embedder: FastEmbedEmbedder) -> None:
    chunker = Chunker(embedder.tokenizer, max_tokens=embedder.max_tokens, chunk_size=4096, chunk_overlap=0)
    assert embedder.max_tokens == 256
    assert chunker.budget == 254
    text = " ".join(["retrieval"] * 5000)
    chunks = chunker.split(text)
    assert max(chunker.count_tokens(c.text) for c in chunks) == 256


def test_paragraph_breaks_are_preferred_cut_points(embedder: FastEmbedEmbedder) -> None:
    chunker = Chunker(embedder.tokenizer, max_tokens=256, chunk_size=100, chunk_overlap=0)
    paragraph = "Bees collect nectar from flowers. " * 7  # ~42 tokens
    text = "\n\n".join([paragraph.strip()] * 3)
    chunks = chunker.split(text)
    # Two paragraphs would fit (84 tokens) but not three: the cut is at the paragraph break.
    assert [c.text for c in chunks] == ["\n\n".join([paragraph.strip()] * 2), paragraph.strip()]


def test_sentences_are_not_cut_when_they_fit(embedder: FastEmbedEmbedder) -> None:
    chunker = Chunker(embedder.tokenizer, max_tokens=256, chunk_size=40, chunk_overlap=10)
    sentences = [f"Sentence number {i} talks about topic {i * 7}." for i in range(60)]
    chunks = chunker.split(" ".join(sentences))
    assert len(chunks) > 5
    for chunk in chunks:
        assert chunk.text.startswith("Sentence number ")
        assert chunk.text.endswith(".")


def test_consecutive_chunks_overlap_by_whole_sentences_within_the_budget(embedder: FastEmbedEmbedder) -> None:
    chunker = Chunker(embedder.tokenizer, max_tokens=256, chunk_size=60, chunk_overlap=20)
    text = " ".join(f"Fact {i} is about the number {i}." for i in range(80))
    chunks = chunker.split(text)
    for previous, following in itertools.pairwise(chunks):
        assert following.start < previous.end, "chunks should share an overlap"
        shared = text[following.start : previous.end]
        assert chunker.count_tokens(shared) - chunker.special_tokens <= 20
        assert shared.endswith(".")


EXPENSES = (
    "Expense policy\n\n"
    "Employees who travel for work may claim a daily meal allowance of 45 euros\n"
    "for every full day away from home, and 20 euros for a partial day of more\n"
    "than eight hours. Receipts are not required for the meal allowance.\n\n"
    "Hotel costs are reimbursed up to 150 euros per night in Germany and up to\n"
    "200 euros per night abroad, only against an itemised invoice.\n"
)
MARKDOWN = (
    "# On-call policy\n"
    "The on-call engineer carries the pager for one week, from Monday 10:00 to the\n"
    "following Monday. Handover happens at the stand-up, where the outgoing engineer\n"
    "walks the incoming one through the open incidents\n"
    "- Page the secondary when the primary has not acknowledged an alert within\n"
    "  15 minutes\n"
    "1. Page the manager for every incident that affects payments and the ledger\n"
    "> A quoted remark that is long enough to look like running text, wrapped\n"
    "| code | meaning of the code in the table row, long enough to be wrapped |\n"
    "| BILL-4031 | the provider rejected the idempotency key of the request |\n"
    "```\n"
    "kubectl rollout status deployment/billing --namespace payments --timeout 5m\n"
    "kubectl rollout undo deployment/billing --namespace payments --to-revision 7\n"
    "```\n"
    "Name: billing\n"
    "Owner: payments team\n"
)


def _sentences_of(text: str) -> list[str]:
    return [" ".join(text[a:b].split()) for a, b in sentence_spans(text)]


def test_a_line_break_inside_running_text_is_not_a_sentence_end() -> None:
    """Hard-wrapped text (EYES_SVC2 S1): a line break ended a sentence, so "... a partial day of more" was one."""
    assert _sentences_of(EXPENSES) == [
        "Expense policy",
        "Employees who travel for work may claim a daily meal allowance of 45 euros for every full day away from "
        "home, and 20 euros for a partial day of more than eight hours.",
        "Receipts are not required for the meal allowance.",
        "Hotel costs are reimbursed up to 150 euros per night in Germany and up to 200 euros per night abroad, "
        "only against an itemised invoice.",
    ]
    # CRLF line ends and indented continuation lines (a man page's hanging indent) wrap the same way.
    assert _sentences_of(EXPENSES.replace("\n", "\r\n")) == _sentences_of(EXPENSES)
    man = (
        "       EPERM  The calling thread has  insufficient  privilege  to  call  iopl();  the  CAP_SYS_RAWIO\n"
        "              capability is required to raise the I/O privilege level above its current value.\n"
    )
    assert len(_sentences_of(man)) == 1
    # A man page's error list: the code, then its meaning under a hanging indent, is one sentence.
    errors = (
        "       ENOTCONN\n"
        "              The specified socket is not connected.\n\n"
        "       EINVAL An invalid value was specified in how.\n"
    )
    assert _sentences_of(errors) == [
        "ENOTCONN The specified socket is not connected.",
        "EINVAL An invalid value was specified in how.",
    ]


def test_list_items_headings_quotes_tables_code_and_short_lines_keep_their_line_breaks() -> None:
    assert _sentences_of(MARKDOWN) == [
        "# On-call policy",
        "The on-call engineer carries the pager for one week, from Monday 10:00 to the following Monday.",
        "Handover happens at the stand-up, where the outgoing engineer walks the incoming one through the open "
        "incidents",
        "- Page the secondary when the primary has not acknowledged an alert within 15 minutes",
        "1. Page the manager for every incident that affects payments and the ledger",
        "> A quoted remark that is long enough to look like running text, wrapped",
        "| code | meaning of the code in the table row, long enough to be wrapped |",
        "| BILL-4031 | the provider rejected the idempotency key of the request |",
        "```",
        "kubectl rollout status deployment/billing --namespace payments --timeout 5m",
        "kubectl rollout undo deployment/billing --namespace payments --to-revision 7",
        "```",
        "Name: billing",
        "Owner: payments team",
    ]


def test_a_code_block_with_blank_lines_keeps_its_lines_in_chunks(embedder: FastEmbedEmbedder) -> None:
    """The fence is tracked over the whole text, not per paragraph: a blank line inside a fence does not turn
    the code after it into running text."""
    chunker = Chunker(embedder.tokenizer, max_tokens=256, chunk_size=24, chunk_overlap=0)
    code = "\n".join(
        f"result_{i} = compute_the_value_of(argument_{i}, another_argument_{i})" for i in range(6)
    )
    text = f"Intro.\n\n```\n{code}\n\n{code}\n```\n"
    for chunk in chunker.split(text):
        lines = chunk.text.split("\n")
        assert all(line.startswith(("result_", "```", "Intro")) for line in lines if line), chunk.text
        assert not chunk.text.startswith("argument"), chunk.text


def test_the_overlap_of_hard_wrapped_text_starts_at_a_sentence_start(embedder: FastEmbedEmbedder) -> None:
    """The overlap repeated the previous chunk's last lines, so a chunk began mid-sentence ("listener array for
    the specified ..."). Every chunk now starts where a sentence starts."""
    chunker = Chunker(embedder.tokenizer, max_tokens=256, chunk_size=60, chunk_overlap=24)
    prose = " ".join(
        f"Claim {i} says that the allowance for trip number {i} is paid out within {i + 3} working days of the"
        f" request." + (" Receipts are kept for audits." if i % 3 == 0 else "")
        for i in range(40)
    )
    # Wrap at 76 columns, as an editor does.
    lines, line = [], ""
    for word in prose.split():
        if line and len(line) + 1 + len(word) > 76:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    text = "\n".join([*lines, line])
    starts = {a for a, _ in sentence_spans(text)}
    chunks = chunker.split(text)
    assert len(chunks) > 5
    for previous, following in itertools.pairwise(chunks):
        assert following.start in starts, repr(following.text[:60])
        assert following.start < previous.end, "chunks should share an overlap"
    assert_valid_chunks(chunker, text, chunks)


def test_an_overlap_never_starts_inside_a_sentence_split_at_token_offsets(
    embedder: FastEmbedEmbedder,
) -> None:
    chunker = Chunker(embedder.tokenizer, max_tokens=256, chunk_size=30, chunk_overlap=12)
    long_sentence = " ".join(["unbelievably"] * 60) + "."
    text = f"A short opening sentence. {long_sentence} A short closing sentence."
    chunks = chunker.split(text)
    starts = {a for a, _ in sentence_spans(text)}
    for previous, following in itertools.pairwise(chunks):
        # Either a sentence start (with its overlap) or the next piece of the long sentence, with no overlap.
        assert following.start in starts or following.start >= previous.end, (previous, following)
    assert_valid_chunks(chunker, text, chunks)


def test_an_over_long_sentence_is_split_at_word_starts(embedder: FastEmbedEmbedder) -> None:
    chunker = Chunker(embedder.tokenizer, max_tokens=256, chunk_size=50, chunk_overlap=0)
    text = " ".join(["unbelievably"] * 300)  # several word pieces per word, no sentence end
    chunks = chunker.split(text)
    assert len(chunks) > 1
    for chunk in chunks:
        assert chunk.text.startswith("unbelievably")
        assert chunk.text.endswith("unbelievably")
    assert_valid_chunks(chunker, text, chunks)


def test_text_without_tokens_gives_no_chunks(embedder: FastEmbedEmbedder) -> None:
    chunker = Chunker(embedder.tokenizer, max_tokens=256, chunk_size=200, chunk_overlap=32)
    assert chunker.split("") == []
    assert chunker.split(" \n\n\t ") == []


def test_text_the_tokenizer_cannot_split_is_cut_by_characters_at_class_changes(
    embedder: FastEmbedEmbedder,
) -> None:
    chunker = Chunker(embedder.tokenizer, max_tokens=256, chunk_size=200, chunk_overlap=32)
    assert chunker.max_chars == 200 * 16
    # One [UNK] token for WordPiece (a "word" of more than 100 characters): the token budget alone never cut it.
    for text in ["x" * 100_000, "😀" * 9_000]:
        chunks = chunker.split(text)
        assert len(chunks) == -(-len(text) // chunker.max_chars)
        assert_valid_chunks(chunker, text, chunks)
    # Runs of letters and digits: every cut falls where the character class changes.
    text = "".join(("q" * 700 if i % 2 else "7" * 700) for i in range(40))
    chunks = chunker.split(text)
    assert_valid_chunks(chunker, text, chunks)
    for chunk in chunks[:-1]:
        assert text[chunk.end - 1].isalpha() != text[chunk.end].isalpha()
    # A skin-tone modifier or a zero-width joiner sequence is never cut apart.
    family = "👨\u200d👩\u200d👧"
    text = ("👍🏽" + family) * 3000
    for chunk in chunker.split(text):
        assert not chunk.text.startswith(("🏽", "\u200d"))
        assert not chunk.text.endswith("\u200d")


def test_real_text_is_never_cut_by_the_character_cap(embedder: FastEmbedEmbedder) -> None:
    """The cap is far above what real prose and code give: the chunks are exactly those of the token budget."""
    chunker = Chunker(embedder.tokenizer, max_tokens=256, chunk_size=200, chunk_overlap=32)
    uncapped = Chunker(embedder.tokenizer, max_tokens=256, chunk_size=200, chunk_overlap=32)
    uncapped.max_chars = 10**9
    for path in [
        REPO_ROOT / "README.md",
        REPO_ROOT / "docs" / "service.md",
        REPO_ROOT / "service" / "app" / "main.py",
    ]:
        text = path.read_text(encoding="utf-8")
        assert chunker.split(text) == uncapped.split(text)


# The sentence scanner before 2026-11-26 (quadratic on a run of marks without whitespace after it), without its
# "or a line break" branch: since CHUNKER_VERSION 3 `_line_ends` decides which line breaks end a sentence.
BACKTRACKING_SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s)")


def test_the_sentence_scanner_finds_the_same_ends_as_the_backtracking_one() -> None:
    """The linear pattern is a drop-in: on strings of marks, closers, whitespace and letters (every shape that
    decides a sentence end) it matches exactly where the previous pattern did."""
    rng = random.Random(2611)
    alphabet = ".!?\u2026\"'\u201d\u2019)] \n\tab"
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 24)))
        expected = [m.span() for m in BACKTRACKING_SENTENCE_END.finditer(text)]
        assert [m.span() for m in SENTENCE_END.finditer(text)] == expected, repr(text)


def test_a_megabyte_run_of_sentence_marks_is_scanned_in_linear_time() -> None:
    """One PUT of "....." (no whitespace) must not pin a core: the backtracking pattern rescanned the run from
    every position (16 kB took 4.5 s, 2 MB would take hours). The child is bounded only so that a regression
    fails instead of hanging the suite; the linear scan takes a fraction of a second."""
    probe = (
        "from service.app.ingest.chunking import sentence_spans\n"
        "for mark in '.!?\\u2026':\n"
        "    text = 'Start. ' + mark * 2_000_000 + 'x' + \"'\" * 1_000_000 + ' end.'\n"
        "    spans = sentence_spans(text)\n"
        "    assert spans == [(0, 6), (7, len(text))], spans[:3]\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_runs_of_sentence_marks_are_chunked_within_the_limits(embedder: FastEmbedEmbedder) -> None:
    chunker = Chunker(embedder.tokenizer, max_tokens=256, chunk_size=200, chunk_overlap=32)
    for text in ["." * 20_000, "Why?!" + "?!" * 8_000 + " Then... " + "\u2026" * 5_000 + "'" * 3_000]:
        assert_valid_chunks(chunker, text, chunker.split(text))
