"""The panel's words in the user's language: Slicer's translation inside Slicer, the English text elsewhere.

Every message this package shows is written as ``_("… {name} …").format(name=value)``, a literal that Slicer's
``update_translations.py`` (Qt's lupdate) can extract, as the scripted-module template does with ``slicer.i18n.tr``.
That function cannot be imported here directly: PyPI's slicer-core, which the tests run against, has no
``slicer.i18n``, and Slicer's ``tr`` names its translation context after the file that calls it, which through a
wrapper would be this one. So :func:`tr` asks Slicer's own ``getContext`` and ``translate`` with the caller's file
(context ``MedSynthLib.<module>``) and keeps Slicer's rule that a translation whose ``{placeholders}`` differ from
the English text's is not used.
"""

from __future__ import annotations

import inspect
import logging
import string
from typing import FrozenSet, Optional

__all__ = ["tr"]


def tr(text: str) -> str:
    """``text`` translated to Slicer's language (unchanged outside Slicer); import it as ``_``."""
    try:
        from slicer.i18n import getContext, translate
    except ImportError:
        return text
    caller = inspect.currentframe().f_back
    context = getContext(inspect.getsourcefile(caller) or inspect.getfile(caller))
    translated = translate(context, text)
    if _placeholders(translated) != _placeholders(text):
        logging.warning("MedSynth: the translation of %r in context %s does not keep its placeholders; "
                        "the English text is shown.", text, context)
        return text
    return translated


def _placeholders(text: str) -> Optional[FrozenSet[str]]:
    """The ``{name}`` fields of a format string (None for a string with unbalanced braces)."""
    try:
        return frozenset(field for _literal, field, _spec, _conversion in string.Formatter().parse(text) if field is not None)
    except ValueError:
        return None
