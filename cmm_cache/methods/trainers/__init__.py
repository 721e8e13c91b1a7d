"""Training machinery shared by methods: guarded optimizer ops (:mod:`.ops`), Lin et al.'s batched
linear heads (:mod:`.linear_grid`) and the CMM trainer (:mod:`.cmm`). Declares no method."""
