"""Training the click network (:mod:`tumorseg_core.clicknet`): training cubes from labelled folders
(:mod:`.samples`), simulated users (:mod:`.simulate`), the resumable loop (:mod:`.train`) and the
shipped folder it writes (:mod:`.export`)."""
