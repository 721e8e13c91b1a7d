"""The CMM trainer: :mod:`.trainer` (``train_cmm``, the reference transcription), :mod:`.torch_loop`
(the hand-derived step in torch), :mod:`.kernel` (the optional compiled CPU loop, ``cmm_loop.c``) and
:mod:`.threads` (the thread count chosen by timing)."""
