"""Choosing the language model client from settings: an OpenAI-compatible server's, or the embedded SmolLM2 loaded
in this process (which needs torch: the web app never imports this module)."""

from __future__ import annotations

from app.interpret.llm import LLMClient, OpenAIChatClient


def make_client(*, url: str | None, model: str | None, api_key: str | None, max_in_flight: int,
                budget_requests: int | None) -> LLMClient:
    """An OpenAI-compatible server's client when url is given, else the embedded SmolLM2 (loaded in this process,
    which needs the engine extra; `model` then names a GGUF file, or None for the shipped one)."""
    if url:
        if not model:
            raise ValueError("a model name is needed with an LLM url (the server's id for it, see GET /v1/models)")
        return OpenAIChatClient(url, model, api_key=api_key, max_in_flight=max_in_flight,
                                budget_requests=budget_requests)
    from app.interpret.local_llm import LocalChatModel

    shipped = model is None or model == "SmolLM2-135M-Instruct"
    client = LocalChatModel(gguf_path=None if shipped else model, budget_requests=budget_requests)
    # what a 135M model can follow (measured: it answers lists as long as its few-shot examples', writes no
    # [EXPLANATION] line with activation lists, and parrots the explainer's few-shot answers); a lab's server gets
    # delphi's defaults
    client.examples_per_prompt, client.explainer_activations, client.lenient_answers = 1, False, True
    return client
