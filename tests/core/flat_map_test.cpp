// FlatMap and FlatSet against std::map and std::set under the same random operations: same
// answers, same contents in the same order.
#include "core/runtime/flat_map.hpp"

#include <gtest/gtest.h>

#include <map>
#include <set>

#include "core/runtime/rng.hpp"

namespace apiary {
namespace {

TEST(FlatMap, ActsAsStdMapUnderRandomOperations) {
  Rng rng(11);
  FlatMap<int, int> flat;
  std::map<int, int> tree;
  for (int step = 0; step < 20000; ++step) {
    const int key = static_cast<int>(rng.uniform(0, 500));
    switch (step % 5) {
      case 0: {
        auto [fi, fnew] = flat.try_emplace(key, step);
        auto [ti, tnew] = tree.try_emplace(key, step);
        ASSERT_EQ(fnew, tnew);
        ASSERT_EQ(fi->second, ti->second);
        break;
      }
      case 1:
        ASSERT_EQ(flat.count(key), tree.count(key));
        if (tree.count(key)) {
          ASSERT_EQ(flat.at(key), tree.at(key));
        } else {
          EXPECT_THROW(flat.at(key), std::out_of_range);
        }
        break;
      case 2:
        flat[key] += 1;
        tree[key] += 1;
        break;
      case 3:
        ASSERT_EQ(flat.find(key) == flat.end(), tree.find(key) == tree.end());
        break;
      default:
        if (auto it = flat.find(key); it != flat.end()) {
          auto next = flat.erase(it);
          ASSERT_EQ(next == flat.end(), tree.upper_bound(key) == tree.end());
          if (next != flat.end()) {
            ASSERT_EQ(next->first, tree.upper_bound(key)->first);
          }
        }
        tree.erase(key);
    }
  }
  ASSERT_EQ(flat.size(), tree.size());
  auto t = tree.begin();
  for (const auto& [k, v] : flat) {
    EXPECT_EQ(k, t->first);
    EXPECT_EQ(v, t->second);
    ++t;
  }
}

TEST(FlatSet, ActsAsStdSetUnderRandomInserts) {
  Rng rng(12);
  FlatSet<std::pair<int, int>> flat;
  std::set<std::pair<int, int>> tree;
  for (int step = 0; step < 5000; ++step) {
    const std::pair<int, int> v{static_cast<int>(rng.uniform(0, 40)), static_cast<int>(rng.uniform(0, 40))};
    ASSERT_EQ(flat.insert(v).second, tree.insert(v).second);
    ASSERT_EQ(flat.count({v.second, v.first}), tree.count({v.second, v.first}));
  }
  ASSERT_EQ(flat.size(), tree.size());
  EXPECT_TRUE(std::equal(flat.begin(), flat.end(), tree.begin(), tree.end()));
}

}  // namespace
}  // namespace apiary
