"""Text generation inside a worker: the engine behind the built-in ``text_generation`` handler
(worker/ts/torch_handler/text_generation.py).

- ``requests``: an OpenAI completions or chat request's body -> a ``GenerationRequest``
  (checked: a bad parameter is the client's 400, in OpenAI's error JSON);
- ``kv_batch``: the running batch's KV cache, one left-padded row per sequence;
- ``sampling``: greedy and sampled decoding (temperature, top_k, top_p, a seed per request);
- ``engine``: sequences join (a prefill of their own), decode one token each per step, and
  leave (done, or their client hung up);
- ``answers``: what a sequence's client sees: OpenAI's JSON or its server-sent events.

Nothing here imports transformers: the handler does, when a model uses it.
"""
