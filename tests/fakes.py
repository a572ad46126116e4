"""Test doubles shared by the HTTP-client tests."""


class FakeTime:
  """Injected sleep/clock: records every wait, advances a fake clock instead of sleeping."""

  def __init__(self):
    self.now = 1000.0
    self.sleeps = []

  def sleep(self, s):
    self.sleeps.append(s)
    self.now += s

  def clock(self):
    return self.now
