"""The top layer: the Flower apps, the command line and the one federation builder.

The only code that imports everything: the core (:mod:`fl_shadow`), the attacks
(:mod:`attacks`), the clients (:mod:`clients`) and the server side (:mod:`strategies`).

* :mod:`~fl_shadow.apps.experiment`: load a config and check it whole, before anything runs;
* :mod:`~fl_shadow.apps.federation`: ``build_federation(config)``: clients, curious server,
  attack prior, scorer, evaluation;
* :mod:`~fl_shadow.apps.server_app`, :mod:`~fl_shadow.apps.client_app`: Flower's ServerApp
  and ClientApp (``flwr run``, SuperLink/SuperNode);
* :mod:`~fl_shadow.apps.inprocess`: the same federation driven by Flower's server loop in one
  process, without Ray (experiment scripts, tests);
* :mod:`~fl_shadow.apps.cli`: ``fl-shadow``.
"""
