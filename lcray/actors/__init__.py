"""Ray actors (rollout, scorer, learner) and the driver-side pools that drive them.

Import actors from their modules (e.g. lcray.actors.scorer); this package stays light.
"""
