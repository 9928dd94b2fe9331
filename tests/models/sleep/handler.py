"""Sleeps the number of seconds in its JSON body {"sleep": s}, then answers."""
import time


def handle(data, context):
    if data is None:
        return None
    seconds = max(float(row.get("body", {}).get("sleep", 0)) for row in data)
    time.sleep(seconds)
    return [{"slept": seconds} for _ in data]
