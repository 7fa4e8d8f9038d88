"""The app's tabbed panes: Textual's TabbedContent, minus a stale-focus race.

TabbedContent activates the pane that holds the focus, acting on a ``TabPane.Focused`` message. That message
is queued, so it can arrive after the user (or the app) has already switched to another pane: the old pane
comes back, and with a second pane doing the same the two hand the active tab back and forth for ever (a
busy UI thread). Here a ``Focused`` message only counts while its pane still holds the focus.
"""

from __future__ import annotations

from textual.widgets import TabbedContent, TabPane


class Panes(TabbedContent):
    def _on_tab_pane_focused(self, event: TabPane.Focused) -> None:
        focused = self.screen.focused
        if focused is None or event.tab_pane not in focused.ancestors_with_self:
            event.stop()
            event.prevent_default()  # TabbedContent's own handler would re-activate the stale pane
