"""Returns a malformed result: {"mode": "dict"} -> not a list, {"mode": "short"} -> too short,
{"mode": "unserializable"} -> a value json cannot encode."""


def handle(data, context):
    if data is None:
        return None
    mode = data[0]["body"]["mode"]
    if mode == "dict":
        return {"not": "a list"}
    if mode == "short":
        return data[:-1]
    return [object() for _ in data]
