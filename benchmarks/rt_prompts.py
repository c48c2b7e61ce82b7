"""RT prompt comparison for verbalizer scoring (issue 23): per prompt, the margin threshold fitted on NTR train
reviews (rows 400+ of the train split, the shot reviews left out), the accuracy on the first NTE test reviews, and
(optional) the fraction of labels kept under six skip plans on the first NPLAN test reviews.

    OMP_NUM_THREADS=1 python benchmarks/rt_prompts.py 80 80 v1,s4 40

Prompts: ``v1`` = SwitchDec-RottenTomatoes-v1's 2-shot template; ``s4`` / ``s6`` = 4 / 6 shots (short train
reviews, balanced); ``gb4`` = 4 shots with good / bad verbalizers; ``gt2`` = 2 shots with great / terrible.
"""
import sys, time, numpy as np, torch
torch.set_num_threads(1)
import skipenv
from skipenv.tasks import make_task
from skipenv.envs.switchdec import SwitchDecEnv
S = skipenv.SkipPlan.from_skips
NTR, NTE = int(sys.argv[1]), int(sys.argv[2]); kinds = sys.argv[3].split(",")
base = make_task("rotten_tomatoes_scored")
tr_all = base.examples("train")
pos = [e for e in tr_all[:400] if e.label == "positive" and len(e.document) < 110]
neg = [e for e in tr_all[:400] if e.label == "negative" and len(e.document) < 110]
used = {e.id for e in pos[:3] + neg[:3]}
def shots(k, words=("positive", "negative")):
    out = ""
    for i in range(k):
        p, n = pos[i], neg[i]
        out += f"Review: {p.document}\nSentiment: {words[0]}\n\n" + f"Review: {n.document}\nSentiment: {words[1]}\n\n"
    return out
HEAD = "Classify the sentiment of each movie review as positive or negative.\n\n"
T = {
 "v1": (base.user_template, ("positive", "negative")),
 "s4": (HEAD + shots(2) + "Review: {document}\nSentiment:", ("positive", "negative")),
 "s6": (HEAD + shots(3) + "Review: {document}\nSentiment:", ("positive", "negative")),
 "gt2": ("Classify each movie review as great or terrible.\n\n" + shots(1, ("great", "terrible")) + "Review: {document}\nSentiment:", ("great", "terrible")),
 "gb4": ("Classify each movie review as good or bad.\n\n" + shots(2, ("good", "bad")) + "Review: {document}\nSentiment:", ("good", "bad")),
}
gen = None
def best_threshold(m, y):
    s = np.sort(m); c = np.concatenate([[s[0]-1], (s[1:]+s[:-1])/2, [s[-1]+1]])
    a = [((m > t) == y).mean() for t in c]; i = int(np.argmax(a)); return float(c[i]), float(a[i])
for kind in kinds:
    tmpl, verb = T[kind]
    task = make_task("rotten_tomatoes_scored", user_template=tmpl, verbalizers=verb)
    kw = dict(quality="label_agreement", disk_cache=False)
    if gen is not None: kw["generator"] = gen
    env = SwitchDecEnv(task, split="train", **kw); gen = env.generator; ev = env.evaluator
    tr = [e for e in task.examples("train")[400:] if e.id not in used][:NTR]
    te = task.examples("test")[:NTE]
    t0 = time.time()
    mtr = np.array([ev.label_margin(e, None) for e in tr]); ytr = np.array([e.label == "positive" for e in tr])
    th, atr = best_threshold(mtr, ytr)
    mte = np.array([ev.label_margin(e, None) for e in te]); yte = np.array([e.label == "positive" for e in te])
    ate = ((mte > th) == yte).mean()
    print(f"{kind}: train n={len(tr)} th={th:.3f} acc={atr:.3f} | test n={len(te)} acc={ate:.3f} acc@0={((mte>0)==yte).mean():.3f} "
          f"|m-th| median {np.median(np.abs(mte-th)):.2f} len={len(ev.prompt(te[0]))} {time.time()-t0:.0f}s", flush=True)
    if len(sys.argv) > 4:
        spec = env.plan_spec; L = gen.config.num_hidden_layers; sub = te[:int(sys.argv[4])]; full = mte[:len(sub)] > th
        plans = {"ffn 25-28": S(spec, ffn=range(25, 29)), "ffn 2-5": S(spec, ffn=range(2, 6)),
                 "ffn 10-13": S(spec, ffn=range(10, 14)), "att 10-21": S(spec, attention=range(10, 22)),
                 "att 2-13": S(spec, attention=range(2, 14)), "ffn 14-17": S(spec, ffn=range(14, 18))}
        for name, plan in plans.items():
            mp = np.array([ev.label_margin(e, plan) for e in sub])
            o = ev.outcome(sub[0], plan)
            print(f"   {name}: saved {o.flops_saved:.3f} kept {((mp>th)==full).mean():.3f} acc {((mp>th)==yte[:len(sub)]).mean():.3f} shift {np.mean(mp-mte[:len(sub)]):+.2f}", flush=True)
