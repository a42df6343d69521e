#pragma once
// A map and a set kept as one sorted vector: for the small, short-lived tables of one operation
// (a DHT lookup's candidates: tens to a few thousand entries, built and dropped within a lookup).
// One growing allocation instead of one per entry, binary search, inserts that move a few hundred
// bytes, iteration in key order as std::map and std::set give. Inserting invalidates iterators and
// references (unlike std::map): take them again after an insert.
#include <algorithm>
#include <functional>
#include <stdexcept>
#include <utility>
#include <vector>

namespace apiary {

template <class K, class V, class Less = std::less<K>>
class FlatMap {
 public:
  using value_type = std::pair<K, V>;
  using iterator = typename std::vector<value_type>::iterator;
  using const_iterator = typename std::vector<value_type>::const_iterator;

  iterator begin() { return items_.begin(); }
  iterator end() { return items_.end(); }
  const_iterator begin() const { return items_.begin(); }
  const_iterator end() const { return items_.end(); }
  std::size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  void clear() { items_.clear(); }

  iterator find(const K& key) { return found(items_, key); }
  const_iterator find(const K& key) const { return found(items_, key); }
  std::size_t count(const K& key) const { return find(key) != end() ? 1 : 0; }
  V& at(const K& key) {
    auto it = find(key);
    if (it == end()) throw std::out_of_range("FlatMap::at: no such key");
    return it->second;
  }
  const V& at(const K& key) const {
    auto it = find(key);
    if (it == end()) throw std::out_of_range("FlatMap::at: no such key");
    return it->second;
  }
  template <class... Args>
  std::pair<iterator, bool> try_emplace(const K& key, Args&&... args) {
    auto it = lower(key);
    if (it != items_.end() && !Less{}(key, it->first)) return {it, false};
    it = items_.emplace(it, std::piecewise_construct, std::forward_as_tuple(key), std::forward_as_tuple(std::forward<Args>(args)...));
    return {it, true};
  }
  V& operator[](const K& key) { return try_emplace(key).first->second; }
  iterator erase(const_iterator it) { return items_.erase(it); }

 private:
  template <class Items>
  static auto lower(Items& items, const K& key) {
    return std::lower_bound(items.begin(), items.end(), key, [](const value_type& e, const K& k) { return Less{}(e.first, k); });
  }
  template <class Items>
  static auto found(Items& items, const K& key) {
    auto it = lower(items, key);
    return it != items.end() && !Less{}(key, it->first) ? it : items.end();
  }
  iterator lower(const K& key) { return lower(items_, key); }
  std::vector<value_type> items_;
};

template <class K, class Less = std::less<K>>
class FlatSet {
 public:
  using iterator = typename std::vector<K>::const_iterator;

  iterator begin() const { return items_.begin(); }
  iterator end() const { return items_.end(); }
  std::size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  void clear() { items_.clear(); }

  iterator find(const K& key) const {
    auto it = std::lower_bound(items_.begin(), items_.end(), key, Less{});
    return it != items_.end() && !Less{}(key, *it) ? it : items_.end();
  }
  std::size_t count(const K& key) const { return find(key) != end() ? 1 : 0; }
  std::pair<iterator, bool> insert(const K& key) {
    auto it = std::lower_bound(items_.begin(), items_.end(), key, Less{});
    if (it != items_.end() && !Less{}(key, *it)) return {it, false};
    return {items_.insert(it, key), true};
  }

 private:
  std::vector<K> items_;
};

}  // namespace apiary
