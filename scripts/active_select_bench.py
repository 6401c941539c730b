"""Selection time of each query strategy at a 40k-image pool (the issue's target: ≤ 25% of a cycle's training time).

    python scripts/active_select_bench.py [--nodes 40000] [--labeled 4000] [--budget 2000] [--width 0.25]
                                          [--feature-dim D] [--vat-images N] [--threads T] [--device cpu|cuda] [--faiss]
                                          [--subset N] [--max-scored N]

A synthetic pool: ``--nodes`` images (labeled + pool; 40,000 = CIFAR-10's training set
without a 10,000-image validation set) of random 32x32 pixels, of which ``--labeled`` are
labeled. The features are the model's own (ResNet-18 at ``--width``, random weights: the
cost does not depend on the weights), the graph and propagation are REVIVAL's defaults.
Timed, each once: the features/logits forward over every node (every strategy pays it),
the kNN graph, the propagation, random, entropy, coreset (k-center greedy), and REVIVAL's
virtual adversarial scoring of the pool; the scoring is timed on ``--vat-images`` images
and scaled linearly to the whole pool when that is fewer (said in the output).

The comparison: a cycle's training time is in each cycle's ``time.train_s`` of
``active.json`` (or estimate it as steps × the "machine:" line's plain-step time × the
method's step cost); the script prints the plain-step time of the same model for that.
``--faiss`` also times faiss's exact inner-product search (faiss-cpu, if importable)
against camssl's chunked torch matrix product for the kNN search. ``--subset N`` times what
``active.subset=N`` does: every cycle scores the labeled set and N random pool images, not the
whole pool; ``--max-scored N`` times ``active.revival.max_scored=N`` (REVIVAL perturbs only the
N least confident virtual labels).
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=40000)
    p.add_argument("--labeled", type=int, default=4000)
    p.add_argument("--budget", type=int, default=2000)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--vat-images", type=int, default=4000, help="images REVIVAL's scoring is timed on [4000]")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--faiss", action="store_true", help="also time faiss-cpu's exact kNN search")
    p.add_argument("--subset", type=int, default=0, help="score the labeled set + this many pool images [0: all]")
    p.add_argument("--max-scored", type=int, default=0, help="REVIVAL perturbs at most this many images [0: all]")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from camssl.active import ActiveConfig, pool_context, select
    from camssl.active.propagation import knn_graph, knn_search, normalized_adjacency
    from camssl.active.strategies import revival_scores
    from camssl.augment import AugmentConfig, Augmenter
    from camssl.machine import plain_step_seconds
    from camssl.models import build_model

    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.nodes, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)
    labeled = torch.randperm(args.nodes, generator=g)[: args.labeled].sort().values
    labels = torch.randint(0, args.classes, (args.labeled,), generator=g)
    if args.subset:  # as active.subset: the labeled nodes + a random part of the pool
        is_pool = torch.ones(args.nodes, dtype=torch.bool)
        is_pool[labeled] = False
        pool_all = torch.nonzero(is_pool).flatten()
        nodes = torch.cat([labeled, pool_all[torch.randperm(len(pool_all), generator=g)[: args.subset]]]).sort().values
        images, labeled = images[nodes.to(device)], torch.searchsorted(nodes, labeled)
    torch.manual_seed(0)
    model = build_model("resnet18", args.classes, width=args.width).to(device).eval()
    augmenter = Augmenter(AugmentConfig(), device)
    cfg = ActiveConfig(strategy="revival", budget=args.budget, subset=args.subset)
    cfg.revival.max_scored = args.max_scored
    times: dict[str, float] = {}

    def timed(name, fn):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times[name] = time.perf_counter() - t0
        return out

    ctx = timed("features + logits (every strategy)", lambda: pool_context(
        model, images, labeled, labels, args.classes, augmenter, cfg, torch.Generator().manual_seed(1)))
    d = ctx.features.shape[1]
    r = cfg.revival
    w = timed(f"kNN graph (k={r.k}, exact, torch)", lambda: knn_graph(ctx.features, r.k, r.gamma))
    ctx.w_hat = timed("normalisation", lambda: normalized_adjacency(w))
    prop = timed("propagation (CG per class)", ctx.propagation)
    for name in ("random", "entropy", "coreset"):
        timed(f"strategy {name}", lambda name=name: select(name, ctx, args.budget))
    pool = ctx.pool()
    n_scored = min(args.max_scored, len(pool)) if args.max_scored else len(pool)
    n_vat = min(args.vat_images, n_scored)
    sub = pool_context(model, images[pool[:n_vat]], torch.tensor([], dtype=torch.long),
                       torch.tensor([], dtype=torch.long), args.classes, augmenter, cfg, torch.Generator().manual_seed(2),
                       features=ctx.features[pool[:n_vat]], logits=ctx.logits[pool[:n_vat]])
    timed("_vat", lambda: revival_scores(sub, prop.probs[pool[:n_vat]]))
    vat = times.pop("_vat") * n_scored / n_vat
    times[f"REVIVAL scoring (VAT) of {n_scored} pool images" + (f" (timed on {n_vat}, scaled)" if n_vat < n_scored else "")] = vat
    if args.faiss:
        try:
            import faiss  # type: ignore[import-not-found]
        except ImportError:
            print("faiss is not importable: pip install faiss-cpu to compare")
        else:
            x = ctx.features.numpy().astype("float32")

            def faiss_knn():
                index = faiss.IndexFlatIP(d)
                index.add(x)
                return index.search(x, r.k + 1)

            timed(f"kNN search, faiss IndexFlatIP (k={r.k})", faiss_knn)
            timed(f"kNN search, torch chunked matmul (k={r.k})", lambda: knn_search(ctx.features, r.k))
    step = plain_step_seconds(build_model("resnet18", args.classes, width=args.width).to(device), 64, (32, 32), device)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    scored = f"; scored: the labeled nodes + {len(pool)} random pool images (--subset)" if args.subset else ""
    print(f"pool: {args.nodes} nodes ({args.labeled} labeled, {args.nodes - args.labeled} pool{scored}), {d} features, "
          f"ResNet-18 width {args.width:g}, {where}")
    for name, t in times.items():
        print(f"  {name:<62} {t:8.2f} s")
    common = times["features + logits (every strategy)"]
    graph = sum(v for k, v in times.items() if k.startswith(("kNN graph", "normalisation", "propagation")))
    print(f"selection per cycle: random {common + times['strategy random']:.1f} s, entropy "
          f"{common + times['strategy entropy']:.1f} s, coreset {common + times['strategy coreset']:.1f} s, "
          f"revival {common + graph + vat:.1f} s")
    print(f"a plain training step of this model (batch 64) takes {1000 * step:.0f} ms here: a cycle of S steps of a "
          f"method costing m plain steps trains for about S x m x {step:.3f} s; the target is selection <= 25% of it")


if __name__ == "__main__":
    main()
