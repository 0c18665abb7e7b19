"""Studies: experiments built from the layers below (models, strategies, train, measure) that a notebook
reports as a whole: the analysis of trained attention, S1's ten dimensions and their card, the leaderboard."""
