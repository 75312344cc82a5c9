"""Price table and budget check (the Prefect pause itself is exercised in the integration tests)."""

from __future__ import annotations

from servenest.topology import Estimate
from tasks.spend import budget_violation, price_markdown

EST = Estimate(21.5, "CNY", "1 x ecs.gn7i-8x.16xlarge in cn-hangzhou-i",
               (("Instance", "ALIYUN::ECS::Instance", 21.5),))


def test_price_markdown_lists_resources_total_and_budget(make_spec):
    spec = make_spec("ecs", cloud={"hourly_budget": 30})
    md = price_markdown(spec, EST)
    assert "| Instance | ALIYUN::ECS::Instance | 21.50 |" in md
    assert "**21.50**" in md and "30.00 CNY/hour" in md


def test_budget_refuses_above_and_passes_at_or_below(make_spec):
    assert budget_violation(make_spec("ecs"), EST) is None  # no budget set
    assert budget_violation(make_spec("ecs", cloud={"hourly_budget": 21.5}), EST) is None
    problem = budget_violation(make_spec("ecs", cloud={"hourly_budget": 20}), EST)
    assert "21.50 CNY/hour" in problem and "over cloud.hourly_budget 20.00" in problem
    assert "nothing was created" in problem
