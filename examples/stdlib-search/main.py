"""Reads the prefetched matches, prompt and stop words; writes out/answer.md."""

import json
import os
import re
from collections import Counter
from pathlib import Path

from kos_see import service

question = service.inputs()["question"]
matches = json.loads(Path("vectors/modules.json").read_text(encoding="utf-8"))
prompt = Path("prompt.txt").read_text(encoding="utf-8")
stopwords = set(Path("stopwords.txt").read_text(encoding="utf-8").split())

words = Counter(
    word
    for match in matches
    for word in re.findall(r"[a-z]{3,}", match["text"].lower())
    if word not in stopwords
)
keywords = [word for word, _ in sorted(words.items(), key=lambda w: (-w[1], w[0]))[:8]]
service.progress(1, 2, message="matches read")

os.makedirs("out", exist_ok=True)
with open("out/answer.md", "w", encoding="utf-8") as out:
    out.write(prompt)
    out.write("\nKeywords of the matches: " + ", ".join(keywords) + "\n")
service.progress(2, 2, message="answer written")
service.result(
    {
        "question": question,
        "best": matches[0]["key"] if matches else None,
        "modules": [m["key"] for m in matches],
        "keywords": keywords,
    }
)
