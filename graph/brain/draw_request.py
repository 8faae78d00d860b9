"""Is this message an explicit ask to make a picture, and of what?

The old keyword layer fired on any "draw", "drawing" or "画", so "I love your drawing", "the match ended
in a draw" and "这个画面好美" got the image refusal instead of an answer. Talking about pictures is not
asking for one: a request is a command (`/draw ...`, `!draw ...`), an imperative addressed to Miku
("draw me a cat", "paint Miku on stage"), a request to her ("can you draw...", "I want you to paint..."),
or "generate/make an image of ..." (the verb alone is not enough for these). Chinese: a sentence that
starts (after an address) with 画/绘制 (not 画面, 画家, 画画很好 ...), optionally after 请/帮我/给我/你能...,
or 生成 with a picture noun. Idioms ("draw a conclusion", "draw the line", "draw attention") never count.

`detect_draw_request(text)` returns the request with the subject to draw (the prompt), or None. It is
pure and fast (a few regexes): the Normal-mode keyword layer; Focus mode may still ask the LLM judge.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_VERBS = r"draw|paint|sketch|illustrate|doodle"
_MAKE_VERBS = r"generate|create|make|render|produce|design"
_IMAGE_NOUNS = (
    r"image|picture|pic|drawing|painting|sketch|illustration|portrait|artwork|art|wallpaper|fanart|"
    r"fan art|doodle|photo|render"
)
# "draw" senses that are not pictures: what follows the verb decides.
_IDIOM_OBJECTS = re.compile(
    r"^(?:a |an |the |some |my |your |our |any |no )?(?:conclusions?|lines?|blood|attention|breath|cards?|"
    r"comparisons?|parallels?|lots|straws?|blanks?|near|closer|to a close|up\b|inspiration|water|fire|crowds?|"
    r"strength|interest|criticism|curtains?|bath|salary|distinctions?|back\b|out\b|on\b|level|even|winners?|"
    r"names?|numbers?|tickets?|a tie|swords?|guns?|weapons?|power|energy|current|funds?|money|cash|sap|"
    r"circles? around|ire|flak|support|votes?|fans\b|raffle|lottery)",
    re.IGNORECASE,
)

# Leading address: a Discord mention, "miku", "hey miku", and separators.
_ADDRESS = re.compile(
    r"^\s*(?:(?:<@!?\d+>|@?miku|@?hatsune miku|初音(?:未来)?|hey|hi|yo|ok|okay|so|oh|um+|嘿|喂)[\s,，:：!！、.~-]*)+",
    re.IGNORECASE,
)
_TRAILING_ADDRESS = re.compile(r"[\s,，]*(?:<@!?\d+>|miku|初音(?:未来)?)?[\s?？!！.。~]*$", re.IGNORECASE)
_COMMAND = re.compile(r"^\s*(?:[/!](?:miku\s+)?(?:draw|paint|imagine|image))(?:\s+|$)(?P<rest>.*)$", re.IGNORECASE | re.DOTALL)
_POLITE = r"(?:please\s+|pls\s+|plz\s+|kindly\s+|just\s+|now\s+|quickly\s+|go\s+(?:and\s+)?|quick\s+)*"
_IMPERATIVE = re.compile(rf"^{_POLITE}(?P<verb>{_VERBS})\b\s*(?P<rest>.*)$", re.IGNORECASE | re.DOTALL)
_ASK = re.compile(
    rf"^(?:(?:can|could|would|will|wanna|won'?t)\s+(?:you|u|ya)|would you mind|do you mind|"
    rf"i(?:'d| would) (?:like|love) (?:you|u) to|i want (?:you|u) to|i need (?:you|u) to|"
    rf"(?:you|u) should|why don'?t (?:you|u)|how about (?:you|u)|mind)\s+{_POLITE}(?:help me\s+|try (?:to\s+|and\s+)?)?"
    rf"(?P<verb>{_VERBS}|{_MAKE_VERBS}|draw(?:ing)?|painting)\b\s*(?P<rest>.*)$",
    re.IGNORECASE | re.DOTALL,
)
_MAKE = re.compile(
    rf"^{_POLITE}(?:{_MAKE_VERBS}|give|send|show)\s+(?:me\s+|us\s+)?(?:a|an|one|some|another|the)?\s*"
    rf"(?:(?:\w+\s+){{0,2}})(?:{_IMAGE_NOUNS})s?\b\s*(?P<rest>.*)$",
    re.IGNORECASE | re.DOTALL,
)
_WANT_PICTURE = re.compile(
    rf"^(?:can|could|may) (?:i|we) (?:get|have|see)\s+(?:a|an|one|some|another)\s+(?:(?:\w+\s+){{0,2}})"
    rf"(?:{_IMAGE_NOUNS})s?\s+(?:of|with|showing)\b\s*(?P<rest>.*)$",
    re.IGNORECASE | re.DOTALL,
)
# Chinese: (请|帮我|给我|你能...) 画/绘制 <not a noun compound>, or 生成/做 ... 图.
_ZH_PREFIX = r"(?:请你?|麻烦你?|拜托你?|你能不能|你可不可以|你可以|你能|能不能|能否|可不可以|可以|快|再)?(?:帮我|给我|替我|为我|帮忙|给大家|帮)?(?:再|来)?"
_ZH_DRAW = re.compile(rf"^{_ZH_PREFIX}(?:画|绘制|绘)(?![画面家展廊质风册技师工布笔板像素])(?P<rest>.*)$", re.DOTALL)
_ZH_MAKE = re.compile(rf"^{_ZH_PREFIX}(?:生成|做|制作|创作|来)(?P<rest>.*?(?:图片|图像|插画|图|画))(?P<tail>.*)$", re.DOTALL)
_ZH_QUESTION_TAIL = re.compile(r"[吗吧呢嘛呀啊]?[\s?？!！。~]*$")

# Object pronouns the subject starts with that are not part of it ("draw me a cat" -> "a cat").
_LEADING_OBJECTS = re.compile(r"^(?:(?:for\s+)?(?:me|us|him|her|them)\s+|(?:an?\s+)?(?:image|picture|pic)\s+of\s+)", re.IGNORECASE)
_TRAILING_POLITE = re.compile(r"(?:[\s,]+(?:please|pls|plz|for me|for us|thanks|thank you|thx))+[\s?!.]*$", re.IGNORECASE)
_ZH_LEADING = re.compile(r"^(?:一下|下)(?=.)")


@dataclass(frozen=True)
class DrawRequest:
    """An explicit ask for a picture: what to draw (may be empty: "!draw" alone) and how it was asked."""

    subject: str
    kind: str  # "command", "imperative", "ask", "make", "zh"


def is_draw_command(text: str) -> bool:
    """`/draw ...` or `!draw ...`: addressed to Miku by itself, no mention needed."""
    return bool(text) and _COMMAND.match(text) is not None


def _strip_address(text: str) -> str:
    text = _ADDRESS.sub("", text, count=1).strip()
    return text


def _clean_subject(rest: str) -> str:
    rest = rest.strip()
    rest = _LEADING_OBJECTS.sub("", rest).strip()
    rest = _TRAILING_POLITE.sub("", rest).strip()
    rest = _TRAILING_ADDRESS.sub("", rest).strip()
    return rest.strip(" ,:;-")


def _is_idiom(rest: str) -> bool:
    rest = _LEADING_OBJECTS.sub("", rest.strip()).strip()
    return bool(_IDIOM_OBJECTS.match(rest))


def detect_draw_request(text: str) -> DrawRequest | None:
    """The request in `text` (one message), or None when it only talks about pictures."""
    if not text or not text.strip():
        return None
    command = _COMMAND.match(text)
    if command:
        return DrawRequest(_clean_subject(command.group("rest")), "command")
    # Only the first sentence can be the ask ("I love your drawing. Draw me one!" counts, by its second).
    for sentence in re.split(r"(?<=[.!?。！？\n])\s*", text.strip()):
        found = _detect_sentence(_strip_address(sentence))
        if found is not None:
            return found
    return None


def _detect_sentence(sentence: str) -> DrawRequest | None:
    if not sentence:
        return None
    for pattern, kind in ((_IMPERATIVE, "imperative"), (_ASK, "ask")):
        match = pattern.match(sentence)
        if match:
            verb = match.group("verb").lower()
            rest = match.group("rest")
            if re.fullmatch(_MAKE_VERBS, verb):
                # "can you make ..." is a picture only with a picture noun: "can you make dinner" is not.
                made = _MAKE.match(f"{verb} {rest}")
                if made:
                    return DrawRequest(_clean_subject(_of(made.group("rest"))), kind)
                continue
            if _is_idiom(rest):
                return None
            return DrawRequest(_clean_subject(rest), kind)
    for pattern in (_MAKE, _WANT_PICTURE):
        match = pattern.match(sentence)
        if match:
            return DrawRequest(_clean_subject(_of(match.group("rest"))), "make")
    zh = _ZH_DRAW.match(sentence)
    if zh:
        rest = _ZH_QUESTION_TAIL.sub("", zh.group("rest"))
        if rest and not re.match(r"^(?:得|的|过|了|很|真|好|太|挺)", rest):  # 画得好 / 画的 / 画过: talk, not a request
            return DrawRequest(_ZH_LEADING.sub("", rest).strip(" ，,"), "zh")
        return None
    zh = _ZH_MAKE.match(sentence)
    if zh:
        subject = _ZH_QUESTION_TAIL.sub("", zh.group("rest") + zh.group("tail"))
        return DrawRequest(_ZH_LEADING.sub("", subject).strip(" ，,"), "zh")
    return None


def _of(rest: str) -> str:
    """"of a cat" -> "a cat" (after a picture noun)."""
    return re.sub(r"^(?:of|with|showing|featuring)\s+", "", rest.strip(), flags=re.IGNORECASE)
