"""Strategies that choose which channels to keep."""

from prunepass.select.constraints import ChannelConstraint, allowed_widths, uniform_widths
from prunepass.select.uniform import uniform_plan

__all__ = ["ChannelConstraint", "allowed_widths", "uniform_plan", "uniform_widths"]
