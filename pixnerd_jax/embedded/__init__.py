"""The embedded jobs (the digits, class-conditional and captioned): the pieces that only
they need, behind the interfaces the real jobs use. Their datasets are ordinary sources
in `data/`."""
