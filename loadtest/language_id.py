"""How well the server tells a transcript's language (``languages`` in responses).

Two measurements, each over sentences in the model's six languages:

- ``text``: the detector alone (``LanguageIdentifier``, lingua over the text) on each
  sentence and on its first 1, 2, 3 and 5 words: what it answers for a correct transcript
  of each length. Counted as right, unsure (empty ``languages``) or wrong.
- ``--server URL``: each sentence spoken by espeak-ng in its language's voice, sent to a
  running server, its ``languages`` compared with the language spoken; plus English digit
  strings, the speech the test model was trained on. With the real model this measures
  the whole path; the test model writes English digit words whatever it hears, so for it
  the other languages' clips show only that nothing but the transcript is read.

    python -m loadtest.language_id
    python -m loadtest.language_id --server http://127.0.0.1:8000 --model tiny-granite-speech
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from loadtest.requirements import require

SENTENCES = {
    "en": [
        "Please send the invoice to the accounting team before Friday.",
        "The train to the airport leaves every twenty minutes.",
        "I would like to book a table for four people tonight.",
        "Can you tell me where the nearest pharmacy is?",
        "Our quarterly results were better than we expected.",
        "The meeting has been moved to next Tuesday afternoon.",
    ],
    "fr": [
        "Veuillez envoyer la facture au service comptable avant vendredi.",
        "Le train pour l'aéroport part toutes les vingt minutes.",
        "Je voudrais réserver une table pour quatre personnes ce soir.",
        "Pouvez-vous me dire où se trouve la pharmacie la plus proche ?",
        "Nos résultats trimestriels sont meilleurs que prévu.",
        "La réunion a été déplacée à mardi prochain après-midi.",
    ],
    "de": [
        "Bitte schicken Sie die Rechnung vor Freitag an die Buchhaltung.",
        "Der Zug zum Flughafen fährt alle zwanzig Minuten.",
        "Ich möchte heute Abend einen Tisch für vier Personen reservieren.",
        "Können Sie mir sagen, wo die nächste Apotheke ist?",
        "Unsere Quartalszahlen waren besser als erwartet.",
        "Die Besprechung wurde auf nächsten Dienstagnachmittag verschoben.",
    ],
    "es": [
        "Por favor, envíe la factura al departamento de contabilidad antes del viernes.",
        "El tren al aeropuerto sale cada veinte minutos.",
        "Me gustaría reservar una mesa para cuatro personas esta noche.",
        "¿Puede decirme dónde está la farmacia más cercana?",
        "Nuestros resultados trimestrales fueron mejores de lo esperado.",
        "La reunión se ha trasladado al próximo martes por la tarde.",
    ],
    "pt": [
        "Por favor, envie a fatura para o departamento de contabilidade antes de sexta-feira.",
        "O comboio para o aeroporto parte a cada vinte minutos.",
        "Gostaria de reservar uma mesa para quatro pessoas esta noite.",
        "Pode dizer-me onde fica a farmácia mais próxima?",
        "Os nossos resultados trimestrais foram melhores do que esperávamos.",
        "A reunião foi adiada para a próxima terça-feira à tarde.",
    ],
    "ja": [
        "金曜日までに請求書を経理部に送ってください。",
        "空港行きの電車は二十分ごとに出発します。",
        "今夜四人でテーブルを予約したいのですが。",
        "一番近い薬局はどこですか。",
        "四半期の業績は予想よりも良かったです。",
        "会議は来週の火曜日の午後に変更されました。",
    ],
}
"""Everyday sentences, the same six things said in each language."""
PREFIX_WORDS = (1, 2, 3, 5)
DIGITS = "zero one two three four five six seven eight nine".split()


def words(sentence: str, language: str, count: int) -> str:
    """The sentence's first ``count`` words (for Japanese, which has no spaces, ``count``
    times three characters: about a word each)."""
    if language == "ja":
        return sentence[:count * 3]
    return " ".join(sentence.split()[:count])


def outcome(answer: str | None, spoken: str) -> str:
    return "unsure" if answer is None else "right" if answer == spoken else "wrong"


def measure_text() -> dict:
    from granite_speech_server.asr.language_id import LanguageIdentifier

    identifier = LanguageIdentifier.loaded()
    table: dict[str, dict[str, collections.Counter]] = {}
    for language, sentences in SENTENCES.items():
        for length in (*PREFIX_WORDS, "whole"):
            counts = table.setdefault(str(length), {}).setdefault(language, collections.Counter())
            for sentence in sentences:
                text = sentence if length == "whole" else words(sentence, language, length)
                counts[outcome(identifier.identify(text), language)] += 1
    return {length: {lang: dict(c) for lang, c in by_lang.items()}
            for length, by_lang in table.items()}


def speak(text: str, voice: str, path: Path) -> bytes:
    subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(path), text], check=True)
    return path.read_bytes()


def measure_server(url: str, model: str, digit_clips: int, seed: int) -> dict:
    import httpx

    rng = random.Random(seed)
    clips = [(language, sentence) for language, sentences in SENTENCES.items()
             for sentence in sentences]
    clips += [("en", " ".join(rng.choice(DIGITS) for _ in range(rng.randint(3, 10))))
              for _ in range(digit_clips)]
    results: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    examples = []
    with tempfile.TemporaryDirectory() as tmp, httpx.Client(base_url=url, timeout=120) as http:
        for number, (language, text) in enumerate(clips):
            audio = speak(text, language, Path(tmp) / f"{number}.wav")
            body = http.post("/v1/audio/transcriptions", data={"model": model},
                             files={"file": ("clip.wav", audio)}).raise_for_status().json()
            detected = [entry["code"] for entry in body["languages"]]
            group = "en (digits)" if text.split()[0] in DIGITS else language
            results[group][outcome(detected[0] if detected else None, language)] += 1
            if len(examples) < 3 or group == "en (digits)" and len(examples) < 6:
                examples.append({"spoken": language, "said": text, "transcript": body["text"],
                                 "languages": detected})
    return {"by_language": {group: dict(c) for group, c in results.items()},
            "examples": examples}


def print_table(title: str, rows: dict[str, dict[str, int]]) -> None:
    print(f"\n{title}\n{'':14}{'right':>7}{'unsure':>8}{'wrong':>7}")
    for name, counts in rows.items():
        print(f"{name:14}{counts.get('right', 0):>7}{counts.get('unsure', 0):>8}"
              f"{counts.get('wrong', 0):>7}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", help="also send spoken clips to this running server")
    parser.add_argument("--model", default="tiny-granite-speech")
    parser.add_argument("--digit-clips", type=int, default=24,
                        help="English digit strings (the test model's speech) to send")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    require("loadtest.language_id", commands=("espeak-ng",) if args.server else ())
    results = {"text": measure_text()}
    for length, rows in results["text"].items():
        label = "whole sentences" if length == "whole" else f"first {length} word(s)"
        print_table(f"detector on the text, {label}:", rows)
    if args.server:
        results["server"] = measure_server(args.server, args.model, args.digit_clips, args.seed)
        print_table(f"spoken clips through {args.server} ({args.model}):",
                    results["server"]["by_language"])
        print(json.dumps(results["server"]["examples"], ensure_ascii=False, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
