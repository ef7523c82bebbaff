"""Grounded answers (POST /v1/answer): retrieve with the search service, then generate an answer citing its sources.

Two generators behind one service: an OpenAI-compatible Chat Completions client (`llm.py`) when LLM_BASE_URL is
set, otherwise an extractive answer from the retrieved sentences (`extractive.py`), so the embedded defaults answer
with no model server. The prompt is built within a token budget (`prompt.py`), `[n]` markers are validated as they
stream (`citations.py`), and a per-tenant token budget caps spend (`budget.py`).
"""
