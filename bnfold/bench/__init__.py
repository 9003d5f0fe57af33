"""``bnfold bench``: latency before and after folding, measured in a child process, with its
statistics, baseline comparison and plot."""
