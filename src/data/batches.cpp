// BatchSampler: the index lists of one epoch, seeded and independent of threads.
#include <numeric>

#include "normlab/data.hpp"
#include "normlab/error.hpp"
#include "normlab/rng.hpp"

namespace normlab {

BatchSampler::BatchSampler(int64_t n, int64_t batch_size, bool shuffle, uint64_t seed,
                           LastBatch last)
    : n_(n), batch_size_(batch_size), shuffle_(shuffle), seed_(seed), last_(last) {
  if (n < 1) fail("BatchSampler: the dataset has ", n, " samples, need at least 1");
  if (batch_size < 1) fail("BatchSampler: batch size ", batch_size, " must be at least 1");
  const int64_t full = n / batch_size, rem = n % batch_size;
  switch (last) {
    case LastBatch::Keep:
      num_batches_ = full + (rem > 0);
      break;
    case LastBatch::Drop:
      num_batches_ = full;
      break;
    // A remainder of one joins the last full batch; with no full batch it stays alone.
    case LastBatch::MergeSingle:
      num_batches_ = full + (rem > 1 || full == 0);
      break;
  }
  order_.resize(static_cast<size_t>(n));
  set_epoch(0);
}

void BatchSampler::set_epoch(int64_t epoch) {
  epoch_ = epoch;
  std::iota(order_.begin(), order_.end(), int64_t{0});
  if (!shuffle_) return;
  // Fisher-Yates: position i takes a uniform pick of the first i+1.
  Rng rng = Rng(seed_).fork(static_cast<uint64_t>(epoch));
  for (int64_t i = n_ - 1; i > 0; --i)
    std::swap(order_[i], order_[rng.below(static_cast<uint64_t>(i) + 1)]);
}

int64_t BatchSampler::max_batch_size() const {
  if (num_batches_ == 0) return 0;
  if (last_ == LastBatch::MergeSingle && n_ % batch_size_ == 1 && n_ > batch_size_)
    return batch_size_ + 1;
  return std::min(batch_size_, n_);
}

std::span<const int64_t> BatchSampler::batch(int64_t b) const {
  if (b < 0 || b >= num_batches_)
    fail("BatchSampler: batch ", b, " is outside [0, ", num_batches_, ")");
  const int64_t begin = b * batch_size_;
  int64_t end = std::min(begin + batch_size_, n_);
  if (b == num_batches_ - 1 && last_ == LastBatch::MergeSingle && n_ - end == 1) end = n_;
  return {order_.data() + begin, static_cast<size_t>(end - begin)};
}

}  // namespace normlab
