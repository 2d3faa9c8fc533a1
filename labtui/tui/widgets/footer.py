"""The lab's footer: Textual's Footer, recomposed only when what it shows changes.

Why: Textual's Footer rebuilds all its keys (a recompose: ~12 widgets removed and
mounted, then a layout of the whole screen) on every ``bindings_updated`` signal,
and the screen sends one on every focus change: every click on a card, every tab.
In the soak that was the lab's most frequent layout (290 recomposes in 90 s). The
keys shown rarely change (a dialog, a disabled action), so compare them first.

And each recompose leaked the keys it replaced: Footer binds every FooterKey to its
own ``compact`` reactive (``data_bind``), which stores ``(key, setter)`` in the
footer's watcher list, and Textual prunes closed watchers only when ``compact``
changes, which it never does in the lab (Textual issue #6666). Every dialog thus
kept ~8 dead FooterKeys, their styles and rendered Strips alive: a 30-minute soak
grew 2-4 MB/min. ``recompose`` drops them here, the way Textual's own pruning does.
"""

from __future__ import annotations

from textual.screen import Screen
from textual.widgets import Footer


class LabFooter(Footer):
    _shown_keys: tuple | None = None

    def _keys(self, screen: Screen) -> tuple:
        """What compose() would show: each shown binding's key, label and state."""
        return tuple(
            (b.key, b.description, b.action, enabled, tooltip, self.app.get_key_display(b))
            for (_, b, enabled, tooltip) in screen.active_bindings.values()
            if b.show or b.key == self.app.COMMAND_PALETTE_BINDING
        )

    def bindings_changed(self, screen: Screen) -> None:
        if self._bindings_ready and screen.app.app_focus and self.is_attached and screen is self.screen:
            keys = self._keys(screen)
            if keys == self._shown_keys:
                return  # the same keys: nothing to rebuild
            self._shown_keys = keys
        super().bindings_changed(screen)

    async def recompose(self) -> None:
        await super().recompose()
        prune_closed_watchers(self)


def prune_closed_watchers(node) -> int:
    """Drop the watchers of closed widgets from ``node``'s reactives (what Textual's
    Reactive._check_watchers does, but only when a value changes); how many went."""
    watchers = getattr(node, "__watchers", None)  # Textual's attribute, set by watch()
    if not isinstance(watchers, dict):
        return 0
    dropped = 0
    for entries in watchers.values():
        keep = [(r, cb) for r, cb in entries if not getattr(r, "_closing", False)]
        dropped += len(entries) - len(keep)
        entries[:] = keep
    return dropped
