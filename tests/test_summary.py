"""TensorBoard event encoding, checked against a protobuf Event schema built independently."""
import json

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from mpjax import summary
from mpjax.input import tfrecord


def event_class():
  f = descriptor_pb2.FileDescriptorProto(name="ev_test.proto", package="t", syntax="proto3")
  value = f.message_type.add(name="Value")
  value.field.add(name="tag", number=1, type=9, label=1)
  value.field.add(name="simple_value", number=2, type=2, label=1)
  summ = f.message_type.add(name="Summary")
  summ.field.add(name="value", number=1, type=11, label=3, type_name=".t.Value")
  ev = f.message_type.add(name="Event")
  ev.field.add(name="wall_time", number=1, type=1, label=1)
  ev.field.add(name="step", number=2, type=3, label=1)
  ev.field.add(name="file_version", number=3, type=9, label=1)
  ev.field.add(name="summary", number=5, type=11, label=1, type_name=".t.Summary")
  pool = descriptor_pool.DescriptorPool()
  pool.Add(f)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Event"))


def test_event_file_decodes(tmp_path):
  Event = event_class()
  w = summary.EventWriter(str(tmp_path))
  w.scalars(3, {"train/loss": 1.5, "lr": 0.25, "bad": float("nan")})
  w.scalars(2**40, {"val/r2": -0.5})
  w.close()
  events = [Event.FromString(r) for r in tfrecord.iter_records(w.path)]
  assert events[0].file_version == "brain.Event:2"
  assert events[1].step == 3
  assert {v.tag: v.simple_value for v in events[1].summary.value} == {"train/loss": 1.5, "lr": 0.25}
  assert events[2].step == 2**40 and events[2].summary.value[0].simple_value == -0.5
  assert events[2].wall_time > 1.7e9


def test_metric_logger_jsonl(tmp_path):
  log = summary.MetricLogger(str(tmp_path))
  log.write(10, {"loss": 2.0}, prefix="train/")
  log.close()
  assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 10, "train/loss": 2.0}
  assert list((tmp_path / "tensorboard").iterdir())
